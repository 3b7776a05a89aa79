//! The deployment files: Kubernetes manifests (deploy/) parse and keep the promises the issue
//! makes (probes on the admin port, non-root, read-only root, dropped capabilities, grace
//! longer than drain + preStop, ingress timeouts above max_wait and the ping interval), the
//! TOML they ship is a valid xmpp-cm config, and the Dockerfile builds and runs the binary the
//! documented way. YAML is read with Python's PyYAML (present on the project's machines); no
//! Kubernetes schema validator runs here.

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
assert ports == {"http": 5280, "admin": 9280}, ports
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
    assert!(d.contains("EXPOSE 5280 9280"));
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
