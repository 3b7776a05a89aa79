//! The deployment files: Kubernetes manifests (deploy/) parse and keep the promises the issue
//! makes (probes on the admin port, non-root, read-only root, dropped capabilities, grace
//! longer than drain + preStop, ingress timeouts above max_wait and the ping interval), the
//! cluster promises of the base (at least two replicas; the pod's IP from the downward API as
//! the advertise address; the shared key from a Secret volume readable by the container's user
//! only, and never committed; the internal port 5281 declared, in a Service, reachable only from
//! the Deployment's own pods), the TOML they ship is a valid xmpp-cm config that loads without
//! the key file, and the Dockerfile builds and runs the binary the documented way. YAML is read
//! with Python's PyYAML (present on the project's machines), the TOML with Python's tomllib as
//! well as with `Config::load`; schema validation is the last test's job.

mod support;

use std::path::Path;
use std::process::Command;

use support::repo_root;

/// Run a Python check over the deploy/ tree; it prints nothing and exits 0 when all holds.
fn python(script: &str, args: &[&str]) {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 is needed");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn manifests_parse_and_keep_their_promises() {
    let cfg = xmpp_cm::Config::load(Some(&repo_root().join("deploy/base/xmpp-cm.toml")))
        .unwrap_or_else(|e| panic!("deploy/base/xmpp-cm.toml: {e}"));
    let (grace, max_wait, ping) = (cfg.drain.grace, cfg.bosh.max_wait, cfg.websocket.ping_interval);
    assert!(cfg.admin.listen.starts_with("0.0.0.0:9280"), "probes need the admin port reachable");
    let script = r#"
import glob, sys, yaml
root, grace, max_wait, ping = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
docs = {}
for f in sorted(glob.glob(root + "/deploy/**/*.yaml", recursive=True)):
    for d in yaml.safe_load_all(open(f)):
        if d: docs.setdefault(d["kind"], []).append((f, d))
for k in ["Kustomization", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
          "ServiceMonitor", "NetworkPolicy", "Ingress"]:
    assert k in docs, "missing " + k
kust = docs["Kustomization"][0][1]
for r in kust["resources"]:
    assert glob.glob(root + "/deploy/base/" + r), r
(f, dep), = [x for x in docs["Deployment"] if x[0].endswith("base/deployment.yaml")]
spec = dep["spec"]["template"]["spec"]
c = spec["containers"][0]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
assert ports == {"http": 5280, "admin": 9280, "cluster": 5281}, ports
assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
assert spec["securityContext"]["runAsNonRoot"] is True
sc = c["securityContext"]
assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
assert sc["capabilities"]["drop"] == ["ALL"]
assert set(c["resources"]) == {"requests", "limits"}
pre = c["lifecycle"]["preStop"]["exec"]["command"]
assert pre[0] == "sleep", pre
assert spec["terminationGracePeriodSeconds"] > grace + int(pre[1]), "grace period too short"
ing = docs["Ingress"][0][1]["metadata"]["annotations"]
for k in ["proxy-read-timeout", "proxy-send-timeout"]:
    t = int(ing["nginx.ingress.kubernetes.io/" + k])
    assert t > max_wait and t > ping, (k, t)
lb = [d for f, d in docs["Service"] if d["spec"].get("type") == "LoadBalancer"]
assert lb and lb[0]["spec"]["ports"][0]["port"] == 443
sm = docs["ServiceMonitor"][0][1]["spec"]["endpoints"][0]
assert sm["port"] == "admin" and sm["path"] == "/metrics"
side = [d for f, d in docs["Deployment"] if "sidecar" in f]
assert side and len(side[0]["spec"]["template"]["spec"]["containers"]) == 2

# Cluster mode. Several replicas, also at the autoscaler's floor.
assert dep["spec"]["replicas"] >= 2, dep["spec"]["replicas"]
hpa = docs["HorizontalPodAutoscaler"][0][1]["spec"]
assert hpa["minReplicas"] >= 2 and hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"], hpa
# The TOML keeps the key file out (it comes from the env below), so it loads without the file.
import ipaddress, tomllib
cluster = tomllib.load(open(root + "/deploy/base/xmpp-cm.toml", "rb"))["cluster"]
assert "secret_file" not in cluster and "advertise" not in cluster, cluster
assert cluster["listen"] == "0.0.0.0:5281", cluster
# peer_cidrs bounds where a sid can send a forward: never everywhere.
assert cluster["peer_cidrs"] and all(ipaddress.ip_network(n).prefixlen > 0 for n in cluster["peer_cidrs"]), cluster
# POD_IP from the downward API, defined before the advertise address that expands it.
env = [e["name"] for e in c["env"]]
envd = {e["name"]: e for e in c["env"]}
assert envd["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}, envd["POD_IP"]
assert envd["XMPP_CM_CLUSTER__ADVERTISE"]["value"] == "$(POD_IP):5281", envd["XMPP_CM_CLUSTER__ADVERTISE"]
assert env.index("POD_IP") < env.index("XMPP_CM_CLUSTER__ADVERTISE"), env
# The key file is an item of a Secret volume, mounted read-only; group-readable for fsGroup
# (files in Secret volumes belong to root), not world-readable.
key = envd["XMPP_CM_CLUSTER__SECRET_FILE"]["value"]
mounts = [m for m in c["volumeMounts"] if key.startswith(m["mountPath"].rstrip("/") + "/")]
assert len(mounts) == 1 and mounts[0].get("readOnly") is True, (key, c["volumeMounts"])
vol, = [v for v in spec["volumes"] if v["name"] == mounts[0]["name"]]
sec = vol["secret"]
assert sec["secretName"] == "xmpp-cm-cluster", sec
assert [i["path"] for i in sec["items"]] == [key[len(mounts[0]["mountPath"].rstrip("/")) + 1:]], (sec, key)
assert [i["key"] for i in sec["items"]] == ["cluster.key"], sec
mode = sec["defaultMode"]
assert mode & 0o007 == 0 and mode & 0o040 and spec["securityContext"].get("fsGroup"), (oct(mode), spec["securityContext"])
assert "Secret" not in docs, "a Secret is committed under deploy/: " + str([f for f, d in docs.get("Secret", [])])
# A Service in the base exposes the internal port.
svc = [d for f, d in docs["Service"] if "/base/" in f]
assert any(p["port"] == 5281 and p["targetPort"] in ("cluster", 5281) for d in svc for p in d["spec"]["ports"]), svc
# NetworkPolicy: 5281 in and out only with the Deployment's own pods (exactly their labels, this
# namespace); the public and admin ports keep their rules.
pod_labels = dep["spec"]["template"]["metadata"]["labels"]
(f, np), = [x for x in docs["NetworkPolicy"] if x[0].endswith("base/networkpolicy.yaml")]
np = np["spec"]
assert np["podSelector"] == {"matchLabels": pod_labels}, np["podSelector"]
def rules(kind, peer):
    return [(r.get(peer), {p["port"] for p in r.get("ports", [])}) for r in np[kind]]
own = [{"podSelector": {"matchLabels": pod_labels}}]
for kind, peer in [("ingress", "from"), ("egress", "to")]:
    with_cluster = [who for who, ports in rules(kind, peer) if 5281 in ports or not ports]
    assert with_cluster == [own], (kind, with_cluster)
ingress = rules("ingress", "from")
assert (None, {5280}) in ingress, ingress
assert any(ports == {9280} and who and all("namespaceSelector" in w for w in who) for who, ports in ingress), ingress
"#;
    python(script, &[repo_root().to_str().unwrap(), &grace.to_string(), &max_wait.to_string(), &ping.to_string()]);
}

#[test]
fn dockerfile_builds_and_runs_the_binary_the_documented_way() {
    let d = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let froms: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: a builder and a runtime: {froms:?}");
    assert!(froms[0].contains("rust:") && froms[0].contains(" AS builder"), "{froms:?}");
    assert!(d.contains("RUN cargo build --release --locked --bin xmpp-cm"), "build command changed");
    assert!(d.contains("COPY --from=builder /src/target/release/xmpp-cm /usr/local/bin/xmpp-cm"));
    assert!(d.lines().any(|l| l.starts_with("USER ") && !l.contains("root") && !l.contains(" 0")), "runs as root");
    assert!(d.contains("EXPOSE 5280 5281 9280"));
    assert!(d.contains("\"--config\", \"/etc/xmpp-cm/xmpp-cm.toml\""));
    // The config the image ships loads, with the admin port opened by the image's ENV.
    assert!(d.contains("ENV XMPP_CM_ADMIN__LISTEN=0.0.0.0:9280"));
    assert!(Path::new(&repo_root().join("config/example.toml")).is_file());
    // The README documents the same build command and binary path.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    for needle in ["cargo build --release --locked --bin xmpp-cm", "target/release/xmpp-cm", "/etc/xmpp-cm/xmpp-cm.toml"] {
        assert!(readme.contains(needle), "README lacks {needle:?}");
    }
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

/// Schema validation of every manifest with kubernetes-validate (PyPI): it ships the Kubernetes
/// OpenAPI schemas inside the package, so it works without network access, unlike kubeconform,
/// which downloads schemas at run time. `--strict` rejects unknown fields. CRDs (ServiceMonitor)
/// and the Kustomization have no bundled schema and are checked structurally above instead.
#[test]
fn manifests_pass_kubernetes_schema_validation() {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in ["deploy/base", "deploy/examples"] {
        for e in std::fs::read_dir(root.join(dir)).expect("deploy dir") {
            let p = e.expect("entry").path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".yaml") && name != "kustomization.yaml" && name != "servicemonitor.yaml" {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 8, "{files:?}");
    let out = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("kubernetes-validate not runnable ({e}): run scripts/test.sh, which installs it with pip"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schema validation failed:\n{text}");
    assert_eq!(text.matches(" passed for resource ").count(), files.len(), "{text}");
}
