#!/usr/bin/env bash
# Stop with one clear line when a prerequisite of ecrec is missing.
set -u
PY=${1:-python3.11}
fail() { echo "ecrec setup: $*" >&2; exit 1; }
command -v "$PY" >/dev/null 2>&1 || fail "Python 3.11 not found as '$PY': install Python 3.11 (e.g. apt-get install python3.11 python3.11-venv, or pyenv install 3.11) or run 'make PY=/path/to/python3.11'"
ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$ver" = "3.11" ] || fail "'$PY' is Python $ver, ecrec needs 3.11: install it and run 'make PY=/path/to/python3.11'"
"$PY" -c 'import venv, ensurepip' 2>/dev/null || fail "Python 3.11 has no venv/ensurepip module: install python3.11-venv"
command -v java >/dev/null 2>&1 || fail "Java not found: install a JDK 17 (e.g. apt-get install openjdk-17-jre-headless); Spark needs it"
jv=$(java -version 2>&1 | head -1 | sed -E 's/.*version "([0-9]+).*/\1/')
{ [ "$jv" -ge 17 ] 2>/dev/null && [ "$jv" -le 21 ]; } || fail "Java $jv found, Spark 4 needs Java 17 or 21: install openjdk-17-jre-headless"
free_gb=$(df -Pk . | awk 'NR==2 {print int($4/1024/1024)}')
[ "$free_gb" -ge 8 ] || fail "only ${free_gb} GB free on this disk; the virtualenv and a demo lake need about 8 GB: free some space"
exit 0
