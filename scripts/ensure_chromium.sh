#!/usr/bin/env bash
# The Airflow UI test drives Debian's Chromium (playwright cannot download browsers here).
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will fail under CI" >&2
else
  echo "warning: chromium not found and not root: run 'sudo apt-get install chromium' for the browser test" >&2
fi
exit 0
