#!/usr/bin/env python3
"""Validates fnbroker's Kubernetes manifests offline, strictly (an unknown field is an error).

- Kubernetes kinds against the Kubernetes OpenAPI schemas bundled in kubernetes-validate (PyPI).
- KEDA ScaledObjects against the KEDA CRD's schema, as the cloudcoil.models.keda package (PyPI,
  generated from KEDA's CRDs) carries it, made strict: every object with declared properties
  refuses others, as the API server's strict field validation does.
- A kustomization: its resources must exist and validate; each configMapGenerator becomes the
  ConfigMap kustomize would make, and is validated too.

    validate-manifests.py PATH...    (files or directories; exit 1 on the first invalid set)
"""
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.32.0"


def strict(schema):
    """The schema with additionalProperties false wherever properties are declared."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def keda_schema(kind):
    import cloudcoil.models.keda.v1alpha1 as keda

    model = getattr(keda, kind)
    return strict(model.model_json_schema(by_alias=True))


def validate(doc, where):
    api = doc.get("apiVersion", "")
    kind = doc.get("kind", "")
    if api.startswith("keda.sh/"):
        jsonschema.validate(doc, keda_schema(kind))
    elif api.startswith("kustomize.config.k8s.io/"):
        raise ValueError(f"{where}: a kustomization is checked as a directory")
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    print(f"ok: {where}: {kind} {doc.get('metadata', {}).get('name', '')}")


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kustomization(directory):
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for resource in k.get("resources", []):
        target = directory / resource
        if target.is_dir():
            kustomization(target)
        else:
            for doc in documents(target):
                validate(doc, target)
    for gen in k.get("configMapGenerator", []):
        data = {}
        for entry in gen.get("files", []):
            key, _, file = entry.partition("=")
            file = file or key
            data[pathlib.Path(key).name] = (directory / file).read_text()
        configmap = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": gen["name"]},
            "data": data,
        }
        validate(configmap, directory / "kustomization.yaml")


def main(paths):
    failed = False
    for arg in paths:
        path = pathlib.Path(arg)
        try:
            if path.is_dir() and (path / "kustomization.yaml").exists():
                kustomization(path)
            elif path.is_dir():
                for file in sorted(path.glob("*.yaml")):
                    for doc in documents(file):
                        validate(doc, file)
            else:
                for doc in documents(path):
                    validate(doc, path)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            failed = True
            print(f"invalid: {path}: {e.message}", file=sys.stderr)
        except Exception as e:  # a missing file, YAML that does not parse, an unknown kind
            failed = True
            print(f"invalid: {path}: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
