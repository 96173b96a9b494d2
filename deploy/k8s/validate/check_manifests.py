#!/usr/bin/env python3
"""Checks Kubernetes manifests offline; run by deploy/k8s/validate.sh.

    check_manifests.py --kubernetes-version 1.30 [--kustomization K] [--mesh-dir D] FILE...

Every object of every FILE is validated against the JSON schema of that
Kubernetes version bundled with kubernetes-validate, in strict mode: an
unknown field, a wrong type or a kind without a schema (a misspelt kind or
apiVersion) fails. The schema knows nothing of how objects refer to each
other, so on top of it, over all FILEs together:

- every namespaced object is in namespace `mesh`, and no two objects share
  kind, namespace and name;
- every Deployment and StatefulSet selects its own pod template, runs as
  non-root with the runtime's seccomp profile, and each container drops
  every capability, cannot escalate, has a read-only root filesystem,
  resource requests and a memory limit, readiness and liveness probes, and
  mounts only volumes its pod defines;
- a mesh image (mesh/<name>) probes, listens on and declares the same gRPC
  port, and mounts from the Secret mesh-certs only the CA and its own
  certificate and key;
- every Service, PodDisruptionBudget and NetworkPolicy selects some pod
  template, a Service's named target ports exist there, and every
  ConfigMap a pod mounts is among the FILEs;
- a Secret among the FILEs holds every key the pods mount from it, and
  mesh-certs none of ca.key, admin.key and log.key;
- with --mesh-dir, the ConfigMap broker-config holds deploy/mesh's
  broker.toml and acl.toml byte for byte;
- with --kustomization, its `resources` name exactly the other *.yaml
  files of its folder;
- with --nats-server BIN, the ConfigMap nats-config's nats.conf passes
  `BIN -t` (nats-server's own strict check: an unknown key or a bad value
  fails), and BIN is the version of the StatefulSet's nats image.

Prints one line per object and per failure; exits 1 if anything failed.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

NAMESPACE = "mesh"
CLUSTER_SCOPED = {"Namespace"}
WORKLOADS = {"Deployment", "StatefulSet"}
CERTS_SECRET = "mesh-certs"
# Files of `mesh-certs dev` that no pod may get: the CA's key, the human
# operator's key, the file log's at-rest key.
NEVER_IN_SECRET = {"ca.key", "admin.key", "log.key"}


class Checker:
    def __init__(self):
        # (file, object) pairs of every manifest read, for the cross checks.
        self.objects = []
        # Every failure, already formatted, in the order found.
        self.failures = []

    def fail(self, where, message):
        self.failures.append(f"FAIL {where}: {message}")
        print(self.failures[-1])

    def load(self, path):
        try:
            docs = [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
        except (OSError, yaml.YAMLError) as e:
            self.fail(path, f"cannot read YAML: {e}")
            return
        if not docs:
            self.fail(path, "holds no object")
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                self.fail(path, "a document without kind and apiVersion")
                continue
            self.objects.append((path, doc))

    def schema(self, version):
        for path, obj in self.objects:
            where = f"{path} {where_of(obj)}"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                print(f"ok   {where} (schema {version}, strict)")
            except kubernetes_validate.ValidationError as e:
                field = ".".join(str(p) for p in e.path) or "(top)"
                self.fail(where, f"schema {version}: {field}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                self.fail(where, f"no schema: {e.message}")

    def references(self):
        seen = set()
        pods = []  # (where, pod template labels, pod spec, claim template names)
        configmaps = set()
        # Secret name -> its keys, for the Secrets among the FILEs.
        secrets = {}
        for path, obj in self.objects:
            kind, meta = obj["kind"], obj.get("metadata") or {}
            where = f"{path} {where_of(obj)}"
            ns = meta.get("namespace")
            if kind not in CLUSTER_SCOPED and ns != NAMESPACE:
                self.fail(where, f"namespace is {ns!r}, not {NAMESPACE!r}")
            key = (kind, ns, meta.get("name"))
            if key in seen:
                self.fail(where, "a second object of this kind and name")
            seen.add(key)
            if kind == "ConfigMap":
                configmaps.add(meta.get("name"))
            if kind == "Secret":
                keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
                secrets[meta.get("name")] = keys
                if meta.get("name") == CERTS_SECRET and keys & NEVER_IN_SECRET:
                    self.fail(where, f"holds {sorted(keys & NEVER_IN_SECRET)}, which no pod may get")
            if kind in WORKLOADS:
                template = obj.get("spec", {}).get("template", {})
                labels = (template.get("metadata") or {}).get("labels") or {}
                claims = {(t.get("metadata") or {}).get("name") for t in obj["spec"].get("volumeClaimTemplates", [])}
                pods.append((where, labels, template.get("spec") or {}, claims))
                selector = obj.get("spec", {}).get("selector", {}).get("matchLabels") or {}
                if not selector or not subset(selector, labels):
                    self.fail(where, f"selector {selector} does not select its pod template {labels}")
        for where, _, spec, claims in pods:
            self.pod(where, spec, claims, configmaps, secrets)
        for path, obj in self.objects:
            kind = obj["kind"]
            where = f"{path} {where_of(obj)}"
            spec = obj.get("spec") or {}
            if kind == "Service":
                selector = spec.get("selector") or {}
            elif kind in ("PodDisruptionBudget", "NetworkPolicy"):
                key = "selector" if kind == "PodDisruptionBudget" else "podSelector"
                selector = (spec.get(key) or {}).get("matchLabels") or {}
            else:
                continue
            matched = [p for p in pods if selector and subset(selector, p[1])]
            if not matched:
                self.fail(where, f"selector {selector} selects no pod template")
                continue
            if kind == "Service":
                named = {port.get("name") for _, _, s, _ in matched for c in s.get("containers", []) for port in c.get("ports", [])}
                for port in spec.get("ports", []):
                    target = port.get("targetPort")
                    if isinstance(target, str) and target not in named:
                        self.fail(where, f"targetPort {target!r} is no port of the pods it selects")

    def pod(self, where, spec, claims, configmaps, secrets):
        sc = spec.get("securityContext") or {}
        if sc.get("runAsNonRoot") is not True:
            self.fail(where, "pod securityContext.runAsNonRoot is not true")
        if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            self.fail(where, "pod securityContext.seccompProfile.type is not RuntimeDefault")
        volumes = {v.get("name"): v for v in spec.get("volumes", [])}
        for v in volumes.values():
            cm = (v.get("configMap") or {}).get("name")
            if cm is not None and cm not in configmaps:
                self.fail(where, f"volume {v.get('name')!r} mounts ConfigMap {cm!r}, which no file defines")
            secret = v.get("secret") or {}
            if secret.get("secretName") in secrets:
                missing = {i.get("key") for i in secret.get("items") or []} - secrets[secret["secretName"]]
                if missing:
                    self.fail(where, f"volume {v.get('name')!r} mounts {sorted(missing)}, which Secret {secret['secretName']!r} lacks")
        for c in spec.get("containers", []):
            cw = f"{where} container {c.get('name')}"
            csc = c.get("securityContext") or {}
            if csc.get("allowPrivilegeEscalation") is not False:
                self.fail(cw, "securityContext.allowPrivilegeEscalation is not false")
            if csc.get("readOnlyRootFilesystem") is not True:
                self.fail(cw, "securityContext.readOnlyRootFilesystem is not true")
            if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                self.fail(cw, "securityContext.capabilities.drop lacks ALL")
            res = c.get("resources") or {}
            for need in ("cpu", "memory"):
                if need not in (res.get("requests") or {}):
                    self.fail(cw, f"no resources.requests.{need}")
            if "memory" not in (res.get("limits") or {}):
                self.fail(cw, "no resources.limits.memory")
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    self.fail(cw, f"no {probe}")
            for m in c.get("volumeMounts", []):
                if m.get("name") not in volumes and m.get("name") not in claims:
                    self.fail(cw, f"volumeMount {m.get('name')!r} names no volume of the pod")
            image = c.get("image", "")
            if image.startswith("mesh/"):
                self.mesh_container(cw, image.split("/", 1)[1].split(":", 1)[0], c, volumes)

    def mesh_container(self, where, name, c, volumes):
        grpc = [p.get("containerPort") for p in c.get("ports", []) if p.get("name") == "grpc"]
        listen = [e.get("value", "") for e in c.get("env", []) if e.get("name", "").endswith("__LISTEN")]
        ports = {str(p) for p in grpc} | {v.rsplit(":", 1)[-1] for v in listen}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            cmd = ((c.get(probe) or {}).get("exec") or {}).get("command") or []
            if cmd[:2] != ["/app", "healthcheck"] or len(cmd) != 3:
                self.fail(where, f"{probe} is not the exec probe /app healthcheck ADDR")
                continue
            ports.add(cmd[2].rsplit(":", 1)[-1])
        if len(ports) != 1:
            self.fail(where, f"the grpc port, *__LISTEN and the probes disagree: {sorted(ports)}")
        allowed = {"ca.crt", f"{name}.crt", f"{name}.key"}
        for v in volumes.values():
            secret = v.get("secret") or {}
            if secret.get("secretName") != CERTS_SECRET:
                continue
            keys = {i.get("key") for i in secret.get("items") or []}
            if not keys:
                self.fail(where, f"mounts all of Secret {CERTS_SECRET}, not only {sorted(allowed)}")
            elif not keys <= allowed:
                self.fail(where, f"mounts {sorted(keys - allowed)} of Secret {CERTS_SECRET}; only {sorted(allowed)} are its own")

    def drift(self, mesh_dir):
        found = False
        for path, obj in self.objects:
            if obj["kind"] != "ConfigMap" or (obj.get("metadata") or {}).get("name") != "broker-config":
                continue
            found = True
            data = obj.get("data") or {}
            for file in ("broker.toml", "acl.toml"):
                want = (pathlib.Path(mesh_dir) / file).read_text()
                if data.get(file) != want:
                    self.fail(f"{path} configmap/broker-config", f"{file} differs from {mesh_dir}/{file}")
                else:
                    print(f"ok   {path} configmap/broker-config: {file} is {mesh_dir}/{file}")
        if not found:
            self.fail(mesh_dir, "no ConfigMap broker-config to compare with")

    def nats(self, binary):
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
        found = False
        for path, obj in self.objects:
            kind, name = obj["kind"], (obj.get("metadata") or {}).get("name")
            if kind == "StatefulSet" and name == "nats":
                for c in obj["spec"]["template"]["spec"].get("containers", []):
                    tag = c.get("image", "").rpartition(":")[2]
                    if not version.startswith(f"nats-server: v{tag}"):
                        self.fail(f"{path} statefulset/nats", f"image {c.get('image')} is not {version} of the config check")
            if kind != "ConfigMap" or name != "nats-config":
                continue
            found = True
            where = f"{path} configmap/nats-config"
            with tempfile.TemporaryDirectory() as tmp:
                conf = pathlib.Path(tmp) / "nats.conf"
                conf.write_text((obj.get("data") or {}).get("nats.conf", ""))
                # The pod's environment: server_name is $POD_NAME.
                env = dict(os.environ, POD_NAME="nats-0")
                r = subprocess.run([binary, "-t", "-c", str(conf)], capture_output=True, text=True, env=env)
            out = (r.stdout + r.stderr).strip().replace(str(conf), "nats.conf")
            if r.returncode != 0:
                self.fail(where, f"nats.conf refused by {version}: {out}")
            else:
                print(f"ok   {where}: nats.conf passes {version} -t")
        if not found:
            self.fail(binary, "no ConfigMap nats-config to check")

    def kustomization(self, path):
        k = yaml.safe_load(pathlib.Path(path).read_text()) or {}
        listed = list(k.get("resources") or [])
        folder = pathlib.Path(path).parent
        present = sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")
        if sorted(listed) != present or len(set(listed)) != len(listed):
            self.fail(path, f"resources {listed} are not the folder's manifests {present}")
        else:
            print(f"ok   {path} lists every manifest of {folder}")


def subset(small, big):
    return all(big.get(k) == v for k, v in small.items())


def where_of(obj):
    return f"{obj['kind'].lower()}/{(obj.get('metadata') or {}).get('name')}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kubernetes-version", required=True)
    p.add_argument("--kustomization")
    p.add_argument("--mesh-dir")
    p.add_argument("--nats-server")
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    checker = Checker()
    for f in args.files:
        checker.load(f)
    checker.schema(args.kubernetes_version)
    checker.references()
    if args.mesh_dir:
        checker.drift(args.mesh_dir)
    if args.kustomization:
        checker.kustomization(args.kustomization)
    if args.nats_server:
        checker.nats(args.nats_server)
    print(f"{len(checker.objects)} objects, {len(checker.failures)} failures")
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main())
