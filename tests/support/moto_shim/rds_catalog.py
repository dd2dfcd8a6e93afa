"""Static RDS catalogue data that moto 5.2.5 does not have (it answers HTTP 500).

Engine versions and engine-default parameters are hand-written from what AWS
publishes for PostgreSQL 14-17 and Aurora PostgreSQL 14-17. They are plausible,
not exhaustive: enough for the agent to pick a target version and translate a
parameter group. The Aurora *instance-level* list deliberately lacks the RDS-only
storage/WAL parameters (and the cluster-level ones), so translation code has
something to drop.
"""

import csv
import pathlib

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


# The engine-default parameters are data: rds_parameters.csv, one row a parameter, with
# name, value (empty: none), apply_type (static/dynamic), data_type, allowed_values (empty:
# none), modifiable (true/false), scopes and description. Scopes: "rds" = RDS PostgreSQL
# instance group, "ai" = Aurora instance group, "ac" = Aurora cluster group. The rows only in
# "rds" are the storage and WAL parameters that Aurora's storage layer manages; the rows only
# in "ai ac" are Aurora's own.
_PARAMETERS_CSV = pathlib.Path(__file__).with_name("rds_parameters.csv")


def _load_params():
    with _PARAMETERS_CSV.open(newline="", encoding="utf-8") as f:
        return [
            (r["name"], r["value"] or None, r["apply_type"], r["data_type"], r["allowed_values"] or None,
             r["modifiable"] == "true", r["scopes"], r["description"])
            for r in csv.DictReader(f)
        ]


_PARAMS = _load_params()


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
