"""Static RDS catalogue data that moto 5.2.5 does not have (it answers HTTP 500).

Engine versions and engine-default parameters are hand-written from what AWS
publishes for PostgreSQL 14-17 and Aurora PostgreSQL 14-17. They are plausible,
not exhaustive: enough for the agent to pick a target version and translate a
parameter group. The Aurora *instance-level* list deliberately lacks the RDS-only
storage/WAL parameters (and the cluster-level ones), so translation code has
something to drop.
"""

# (engine, versions); the last entry of each list is the default version.
ENGINE_VERSIONS = {
    "postgres": ["14.12", "14.13", "14.15", "15.7", "15.8", "15.10",
                 "16.3", "16.4", "16.6", "17.1", "17.2"],
    "aurora-postgresql": ["14.11", "14.12", "14.13", "15.6", "15.7", "15.8",
                          "16.2", "16.3", "16.4", "17.4"],
}
DEFAULT_VERSION = {"postgres": "17.2", "aurora-postgresql": "16.4"}


def _major(version):
    return int(version.split(".")[0])


def family(engine, version):
    return f"{engine}{_major(version)}"


def engine_versions():
    """All versions as DBEngineVersion dicts shaped like botocore's RDS model."""
    out = []
    for engine, versions in ENGINE_VERSIONS.items():
        for v in versions:
            targets = [
                {
                    "Engine": engine,
                    "EngineVersion": t,
                    "Description": _describe(engine, t),
                    "AutoUpgrade": False,
                    "IsMajorVersionUpgrade": _major(t) != _major(v),
                }
                for t in versions
                if tuple(map(int, t.split("."))) > tuple(map(int, v.split(".")))
            ]
            row = {
                "Engine": engine,
                "MajorEngineVersion": str(_major(v)),
                "EngineVersion": v,
                "DBParameterGroupFamily": family(engine, v),
                "DBEngineDescription": "PostgreSQL" if engine == "postgres" else "Aurora (PostgreSQL)",
                "DBEngineVersionDescription": _describe(engine, v),
                "ValidUpgradeTarget": targets,
                "ExportableLogTypes": ["postgresql", "upgrade"] if engine == "postgres" else ["postgresql"],
                "SupportsLogExportsToCloudwatchLogs": True,
                "SupportsReadReplica": True,
                "Status": "available",
                "SupportsParallelQuery": False,
                "SupportsGlobalDatabases": engine == "aurora-postgresql",
                "SupportsBabelfish": engine == "aurora-postgresql",
                "SupportsLimitlessDatabase": False,
                "SupportsCertificateRotationWithoutRestart": True,
                "SupportsLocalWriteForwarding": engine == "aurora-postgresql" and _major(v) >= 16,
                "SupportsIntegrations": False,
            }
            if engine == "aurora-postgresql":
                row["SupportedEngineModes"] = ["provisioned"]
            out.append(row)
    return out


def _describe(engine, v):
    if engine == "postgres":
        return f"PostgreSQL {v}-R1"
    return f"Aurora PostgreSQL (Compatible with PostgreSQL {v})"


# Scopes: "rds" = RDS PostgreSQL instance group, "ai" = Aurora instance group,
# "ac" = Aurora cluster group.
# (name, value or None, apply_type, data_type, allowed_values, modifiable, scopes, description)
_S, _D = "static", "dynamic"
_PARAMS = [
    ("shared_preload_libraries", "pg_stat_statements", _S, "list",
     "auto_explain,orafce,pg_cron,pg_hint_plan,pg_similarity,pg_stat_statements,pg_tle,pg_transport,pglogical,plprofiler",
     True, "rds ai ac", "Sets which shared libraries are preloaded at server start."),
    ("rds.logical_replication", "0", _S, "boolean", "0,1", True, "rds ac",
     "Enables logical decoding."),
    ("rds.force_ssl", "{force_ssl}", _D, "boolean", "0,1", True, "rds ac",
     "Force SSL connections."),
    ("max_connections", "LEAST({{DBInstanceClassMemory/9531392}},5000)", _S, "integer", "6-262143",
     True, "rds ai ac", "Sets the maximum number of concurrent connections."),
    ("work_mem", "4096", _D, "integer", "64-2147483647", True, "rds ai ac",
     "Sets the maximum memory to be used for query workspaces."),
    ("maintenance_work_mem", "GREATEST({{DBInstanceClassMemory*1024/63963136}},65536)", _D, "integer",
     "1024-2147483647", True, "rds ai ac", "Sets the maximum memory to be used for maintenance operations."),
    ("shared_buffers", "{{DBInstanceClassMemory/32768}}", _S, "integer", "16-1073741823", True, "rds ai",
     "Sets the number of shared memory buffers used by the server."),
    ("effective_cache_size", "{{DBInstanceClassMemory/16384}}", _D, "integer", "1-2147483647", True, "rds ai",
     "Sets the planner's assumption about the size of the disk cache."),
    ("log_min_duration_statement", "-1", _D, "integer", "-1-2147483647", True, "rds ai ac",
     "Sets the minimum execution time above which statements will be logged."),
    ("log_statement", "none", _D, "string", "none,ddl,mod,all", True, "rds ai ac",
     "Sets the type of statements logged."),
    ("log_connections", "0", _D, "boolean", "0,1", True, "rds ai ac", "Logs each successful connection."),
    ("log_disconnections", "0", _D, "boolean", "0,1", True, "rds ai ac", "Logs end of a session, including duration."),
    ("log_temp_files", "-1", _D, "integer", "-1-2147483647", True, "rds ai ac",
     "Log the use of temporary files larger than this number of kilobytes."),
    ("log_autovacuum_min_duration", "10000", _D, "integer", "-1-2147483647", True, "rds ai ac",
     "Sets the minimum execution time above which autovacuum actions will be logged."),
    ("log_rotation_age", "60", _D, "integer", "1-1440", True, "rds ac",
     "Automatic log file rotation will occur after N minutes."),
    ("idle_in_transaction_session_timeout", "86400000", _D, "integer", "0-2147483647", True, "rds ai ac",
     "Sets the maximum allowed duration of any idling transaction."),
    ("statement_timeout", None, _D, "integer", "0-2147483647", True, "rds ai ac",
     "Sets the maximum allowed duration of any statement."),
    ("lock_timeout", None, _D, "integer", "0-2147483647", True, "rds ai ac",
     "Sets the maximum allowed duration of any wait for a lock."),
    ("deadlock_timeout", "1000", _D, "integer", "1-2147483647", True, "rds ai ac",
     "Sets the time to wait on a lock before checking for deadlock."),
    ("random_page_cost", None, _D, "real", "0-2147483647", True, "rds ai ac",
     "Sets the planner's estimate of the cost of a nonsequentially fetched disk page."),
    ("default_statistics_target", None, _D, "integer", "1-10000", True, "rds ai ac",
     "Sets the default statistics target."),
    ("max_parallel_workers_per_gather", "2", _D, "integer", "0-1024", True, "rds ai ac",
     "Sets the maximum number of parallel processes per executor node."),
    ("track_io_timing", "1", _D, "boolean", "0,1", True, "rds ai ac", "Collects timing statistics for database I/O activity."),
    ("pg_stat_statements.track", None, _D, "string", "all,none,top", True, "rds ai ac",
     "Selects which statements are tracked by pg_stat_statements."),
    ("autovacuum", "1", _D, "boolean", "0,1", True, "rds ac", "Starts the autovacuum subprocess."),
    ("autovacuum_max_workers", "GREATEST({{DBInstanceClassMemory/64371566592}},3)", _S, "integer", "1-262143",
     True, "rds ac", "Sets the maximum number of simultaneously running autovacuum worker processes."),
    ("autovacuum_naptime", "15", _D, "integer", "1-2147483", True, "rds ac", "Time to sleep between autovacuum runs."),
    ("autovacuum_vacuum_cost_limit", "GREATEST({{log(DBInstanceClassMemory/21474836480)*600}},200)", _D,
     "integer", "-1-10000", True, "rds ac", "Vacuum cost amount available before napping, for autovacuum."),
    ("timezone", "UTC", _D, "string", None, True, "rds ac", "Sets the time zone for displaying and interpreting time stamps."),
    ("password_encryption", "scram-sha-256", _D, "string", "md5,scram-sha-256", True, "rds ac",
     "Chooses the algorithm for encrypting passwords."),
    ("ssl_min_protocol_version", "TLSv1.2", _D, "string", "TLSv1,TLSv1.1,TLSv1.2,TLSv1.3", True, "rds ac",
     "Sets the minimum SSL/TLS protocol version to use."),
    ("max_replication_slots", "20", _S, "integer", "5-8388607", True, "rds ac",
     "Sets the maximum number of simultaneously defined replication slots."),
    ("max_wal_senders", "20", _S, "integer", "5-8388607", True, "rds ac",
     "Sets the maximum number of simultaneously running WAL sender processes."),
    ("max_logical_replication_workers", "4", _S, "integer", "0-262143", True, "rds ac",
     "Maximum number of logical replication worker processes."),
    ("wal_sender_timeout", "30000", _D, "integer", "0-3600000", True, "rds ac",
     "Sets the maximum time to wait for WAL replication."),
    ("tcp_keepalives_idle", "300", _D, "integer", "0-2147483647", True, "rds ai ac",
     "Time between issuing TCP keepalives."),
    ("temp_buffers", None, _D, "integer", "100-1073741823", True, "rds ai ac",
     "Sets the maximum number of temporary buffers used by each session."),
    # RDS-only: storage and WAL are managed by Aurora's storage layer.
    ("checkpoint_timeout", "300", _D, "integer", "30-86400", True, "rds",
     "Sets the maximum time between automatic WAL checkpoints, in seconds."),
    ("max_wal_size", "2048", _D, "integer", "2-2147483647", True, "rds",
     "Sets the WAL size that triggers a checkpoint."),
    ("min_wal_size", "192", _D, "integer", "2-2147483647", True, "rds",
     "Sets the minimum size to shrink the WAL to."),
    ("wal_keep_size", "2048", _D, "integer", "0-2147483647", True, "rds",
     "Sets the size of WAL files held for standby servers."),
    ("wal_buffers", None, _S, "integer", "-1-262143", True, "rds",
     "Sets the number of disk-page buffers in shared memory for WAL."),
    ("archive_timeout", "300", _D, "integer", "0-1073741823", False, "rds",
     "Forces a switch to the next xlog file if a new file has not been started within N seconds."),
    ("full_page_writes", "1", _D, "boolean", "0,1", False, "rds",
     "Writes full pages to WAL when first modified after a checkpoint."),
    ("fsync", "1", _D, "boolean", "0,1", False, "rds",
     "Forces synchronization of updates to disk."),
    ("synchronous_commit", "on", _D, "string", "local,on,off,remote_write,remote_apply", True, "rds ac",
     "Sets the current transaction's synchronization level."),
    # Aurora-only.
    ("apg_plan_mgmt.capture_plan_baselines", "off", _D, "string", "automatic,manual,off", True, "ai ac",
     "Capture query plan baselines."),
    ("aurora_compute_plan_id", "on", _D, "string", "on,off", True, "ai ac",
     "Compute a plan identifier for each query."),
]


FAMILIES = {family(e, v) for e, vs in ENGINE_VERSIONS.items() for v in vs}


def default_parameters(db_family, cluster=False):
    """Engine-default parameters for a family; None if the family is unknown.

    cluster=True gives the Aurora *cluster* parameter group list."""
    if db_family not in FAMILIES:
        return None
    aurora = db_family.startswith("aurora-")
    if cluster and not aurora:
        return None  # RDS PostgreSQL has no cluster parameter groups here
    scope = ("ac" if cluster else "ai") if aurora else "rds"
    major = int(db_family[len("aurora-postgresql" if aurora else "postgres"):])
    # RDS for PostgreSQL 15+ forces SSL by default; Aurora from 17 on.
    force_ssl = "1" if (major >= 17 or (not aurora and major >= 15)) else "0"
    out = []
    for name, value, apply_type, data_type, allowed, modifiable, scopes, desc in _PARAMS:
        if scope not in scopes.split():
            continue
        p = {
            "ParameterName": name,
            "Description": desc,
            "Source": "engine-default",
            "ApplyType": apply_type,
            "DataType": data_type,
            "IsModifiable": modifiable,
        }
        if value is not None:
            p["ParameterValue"] = value.format(force_ssl=force_ssl)
        if allowed is not None:
            p["AllowedValues"] = allowed
        if aurora:
            p["SupportedEngineModes"] = ["provisioned"]
        out.append(p)
    return sorted(out, key=lambda p: p["ParameterName"])
