"""Validates a compose file against the compose-spec JSON schema, and checks that every
service has a health check (orchestrators and `depends_on` rely on them)."""

import json
import sys

import jsonschema
import yaml

schema_path, compose_path = sys.argv[1], sys.argv[2]
with open(schema_path) as f:
    schema = json.load(f)
with open(compose_path) as f:
    doc = yaml.safe_load(f)

errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
for e in errors:
    print(f"{compose_path}: {'/'.join(map(str, e.path))}: {e.message}")
one_shot = {n for n, s in doc["services"].items() if s.get("restart") == "no"}
for name, service in doc["services"].items():
    if name not in one_shot and "healthcheck" not in service:
        errors.append(name)
        print(f"{compose_path}: service {name} has no healthcheck")
if errors:
    sys.exit(1)
print(f"{compose_path}: valid ({len(doc['services'])} services)")
