-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d).
-- One server, three databases: Airflow metadata, the MLflow backend store, the warehouse.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
CREATE DATABASE warehouse;
