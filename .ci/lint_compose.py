"""Validates a compose file against the compose-spec JSON schema, and checks the rules it is
built on: every long-running service has a health check (orchestrators and `depends_on` rely
on them); each OpsConductor service mounts its own secrets volume, read-only, and no other;
each connects to the broker with its own account and only checks the topology."""

import json
import sys

import jsonschema
import yaml

schema_path, compose_path = sys.argv[1], sys.argv[2]
with open(schema_path) as f:
    schema = json.load(f)
with open(compose_path) as f:
    doc = yaml.safe_load(f)

errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
          for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
services = doc["services"]
one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
for name, service in services.items():
    if name not in one_shot and "healthcheck" not in service:
        errors.append(f"service {name} has no healthcheck")

secret_volumes = {v for v in doc.get("volumes", {}) if v.startswith("secrets-")}
for name, service in services.items():
    command = service.get("command") or []
    mounts = [v.split(":") for v in service.get("volumes", []) if isinstance(v, str)]
    mounted = {m[0] for m in mounts if m[0] in secret_volumes}
    if name == "secrets":
        continue  # the one-shot generator writes every service's volume
    if command[:1] == ["serve"]:
        own = f"secrets-{command[1]}"
        if mounted != {own}:
            errors.append(f"service {name} must mount only {own}, mounts {sorted(mounted)}")
        for m in mounts:
            if m[0] == own and m[-1] != "ro":
                errors.append(f"service {name} must mount {own} read-only")
        env = service.get("environment", {})
        if not str(env.get("AMQP_URL", "")).startswith(f"amqp://{command[1]}@"):
            errors.append(f"service {name} must use its own broker account")
        if env.get("OPSCONDUCTOR_AMQP_DECLARE") != "verify":
            errors.append(f"service {name} must run with OPSCONDUCTOR_AMQP_DECLARE=verify")
    elif mounted - {f"secrets-{name}"}:
        errors.append(f"service {name} mounts secrets that are not its own: {sorted(mounted)}")

for e in errors:
    print(f"{compose_path}: {e}")
if errors:
    sys.exit(1)
print(f"{compose_path}: valid ({len(services)} services)")
