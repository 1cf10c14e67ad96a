//! Deployment: what the Dockerfile, docker-compose.yml and deploy/kubernetes/ start is the
//! gateway they say it is. The binary is run as the image's ENTRYPOINT, CMD and ENV run
//! it (no config file: the secure built-in defaults); compose opts into the development
//! config, which the gateway warns about; the Kubernetes manifests pass only variables the
//! gateway knows, with values it accepts, and their probes, drain and memory agree with
//! the configuration they mount. (Their schemas are checked by `.ci/deploy`.)

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cascade::auth::Auth;
use cascade::auth::token::{Claims, now_secs};
use cascade::config::{Config, DEVELOPMENT_SECRET};
use serde_json::{Value, json};
use support::nodes::Node;
use support::{eventually, http};

/// A repository file's text.
fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// A YAML file of the repository (one document) as JSON values.
fn yaml(path: &str) -> Value {
    yaml_serde::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The runtime stage of the Dockerfile: what `docker run` starts.
struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    /// `COPY` from the build context: (source, destination).
    copies: Vec<(String, String)>,
    /// The numeric user and group the image runs as (`USER uid:gid`).
    user: (u64, u64),
    expose: Vec<u16>,
    /// The build stage's `cargo build` command.
    build: String,
}

/// The Dockerfile's instructions, continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let joined = std::mem::take(&mut current);
                let (word, rest) = joined.split_once(' ').unwrap_or((&joined, ""));
                out.push((word.to_ascii_uppercase(), rest.trim().to_owned()));
            }
        }
    }
    out
}

fn image() -> Image {
    let all = instructions(&read("Dockerfile"));
    let runtime = all.iter().rposition(|(w, _)| w == "FROM").expect("a FROM");
    let build = all[..runtime]
        .iter()
        .filter(|(w, _)| w == "RUN")
        .find_map(|(_, rest)| {
            let at = rest.find("cargo build")?;
            Some(rest[at..].split("&&").next()?.trim().to_owned())
        })
        .expect("the build stage runs cargo build");
    let mut image = Image {
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        env: Vec::new(),
        copies: Vec::new(),
        user: (0, 0),
        expose: Vec::new(),
        build,
    };
    let exec_form = |rest: &str| -> Vec<String> {
        serde_json::from_str(rest).unwrap_or_else(|e| panic!("not exec form: {rest}: {e}"))
    };
    for (word, rest) in &all[runtime + 1..] {
        match word.as_str() {
            "ENTRYPOINT" => image.entrypoint = exec_form(rest),
            "CMD" => image.cmd = exec_form(rest),
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (key, value) = pair.split_once('=').expect("ENV KEY=VALUE");
                    image.env.push((key.to_owned(), value.to_owned()));
                }
            }
            "COPY" if !rest.starts_with("--from") => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                image
                    .copies
                    .push((parts[0].to_owned(), parts[1].to_owned()));
            }
            "USER" => {
                let (uid, gid) = rest.split_once(':').expect("USER uid:gid");
                image.user = (uid.parse().expect("uid"), gid.parse().expect("gid"));
            }
            "EXPOSE" => image.expose.push(rest.parse().expect("a port")),
            _ => {}
        }
    }
    image
}

impl Image {
    /// Where the image puts a file of the build context.
    fn destination_of(&self, source: &str) -> &str {
        let copy = self.copies.iter().find(|(s, _)| s == source);
        &copy
            .unwrap_or_else(|| panic!("the image has no {source}"))
            .1
    }

    /// The image's entrypoint and command as a process of the test: its environment and
    /// nothing else of the test's `CASCADE_*` variables, in a directory without the
    /// repository's files, listening on loopback (the image listens on every interface).
    fn command(&self) -> Command {
        self.command_after(None)
    }

    /// [`Image::command`], started by `sh` after `setup` (a `ulimit`) when given.
    fn command_after(&self, setup: Option<&str>) -> Command {
        assert_eq!(self.entrypoint, ["cascade"], "the entrypoint is the binary");
        let binary = env!("CARGO_BIN_EXE_cascade");
        let mut command = match setup {
            None => Command::new(binary),
            Some(setup) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("{setup} && exec \"$0\" \"$@\""));
                shell.arg(binary);
                shell
            }
        };
        command.args(&self.cmd).current_dir(std::env::temp_dir());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CASCADE_")) {
            command.env_remove(key);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.env("CASCADE_LISTEN", "127.0.0.1:0");
        command
    }
}

/// The config the image's environment and `more` variables give with `file`.
fn config(image: &Image, file: &str, more: &[(String, String)]) -> Config {
    let vars = image.env.iter().chain(more).cloned();
    Config::from_sources(file, vars).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A token for `sub`, allowed everything, signed with `secret`.
fn token_signed_with(secret: &str, sub: &str) -> String {
    let vars = [("CASCADE_TOKEN_HMAC_SECRET".to_owned(), secret.to_owned())];
    let auth = Auth::from_config(&Config::from_sources("", vars).unwrap()).unwrap();
    let claims = Claims {
        sub: sub.to_owned(),
        exp: now_secs() + 3600,
        channels: vec!["*".into()],
        publish: vec!["*".into()],
    };
    auth.sign(&claims).unwrap()
}

fn redis_url() -> String {
    std::env::var("CASCADE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// `POST /publish` of one message, with `header` if any; the status and the body.
async fn publish(node: &Node, header: Option<(&str, &str)>) -> (u16, Value) {
    let mut request = http()
        .post(node.url("/publish"))
        .body(json!({"channel": "chat", "data": 1}).to_string());
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("publish");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.expect("request").status().as_u16()
}

fn logged(node: &Node, text: &str) -> bool {
    node.log().iter().any(|l| l.contains(text))
}

#[tokio::test]
async fn the_image_runs_the_secure_defaults() {
    let image = image();
    assert!(
        !image.cmd.iter().any(|a| a.contains("config")),
        "the image must not default to a config file: {:?}",
        image.cmd
    );
    assert!(!image.env.iter().any(|(k, _)| k == "CASCADE_CONFIG"));
    // Reachable from outside its container, on the port it exposes.
    let defaults = config(&image, "", &[]);
    assert!(defaults.listen.ip().is_unspecified(), "{}", defaults.listen);
    assert_eq!(image.expose, [defaults.listen.port()]);

    let node = Node::start(image.command());
    let log = node.log();
    assert!(logged(&node, "nothing can publish"), "{log:#?}");
    assert!(
        !logged(&node, "INSECURE") && !logged(&node, "demo = true"),
        "{log:#?}"
    );

    // The HEALTHCHECK's probe, and reading a public channel, which the defaults allow.
    assert_eq!(status(http().get(node.url("/healthz"))).await, 200);
    assert_eq!(
        status(http().get(node.url("/poll?channels=chat"))).await,
        200
    );
    // Publishing needs a key: refused without one, and with a token signed with the
    // development secret, which this gateway does not know.
    let (code, body) = publish(&node, None).await;
    assert_eq!(
        (code, &body["error"]["code"]),
        (401, &json!("token_invalid"))
    );
    let token = format!("Bearer {}", token_signed_with(DEVELOPMENT_SECRET, "alice"));
    let (code, _) = publish(&node, Some(("authorization", &token))).await;
    assert_eq!(code, 401);
    // No demo: its page, files and impersonating log-in are not there.
    for path in ["/", "/demo.js", "/demo.css"] {
        assert_eq!(status(http().get(node.url(path))).await, 404, "{path}");
    }
    let login = http()
        .post(node.url("/demo/login"))
        .body(r#"{"name":"alice"}"#);
    assert_eq!(status(login).await, 404);

    // What an operator adds: an API key publishes.
    let mut command = image.command();
    command.env("CASCADE_API_KEYS", "a-backend-key");
    let node = Node::start(command);
    assert!(!logged(&node, "nothing can publish"), "{:#?}", node.log());
    let (code, body) = publish(&node, Some(("x-cascade-api-key", "a-backend-key"))).await;
    assert_eq!(code, 200, "{body}");
}

#[test]
fn the_open_files_limit_is_raised_where_the_runtime_allows() {
    let image = image();
    // Container runtimes may start a process at a soft limit far below the hard one.
    let mut command = image.command_after(Some("ulimit -Sn 256"));
    command.env("CASCADE_LIMITS_MAX_CONNECTIONS", "100");
    let node = Node::start(command);
    let raised = node
        .log()
        .into_iter()
        .find(|l| l.contains("raised the open-files"));
    let raised = raised.unwrap_or_else(|| panic!("{:#?}", node.log()));
    assert!(raised.contains("from=256"), "{raised}");
    assert!(
        !logged(&node, "below limits.max_connections"),
        "{:#?}",
        node.log()
    );
    // A hard limit too low for limits.max_connections (50,000 by default) is warned about.
    let node = Node::start(image.command_after(Some("ulimit -n 256")));
    let warning = node
        .log()
        .into_iter()
        .find(|l| l.contains("below limits.max_connections"));
    let warning = warning.unwrap_or_else(|| panic!("{:#?}", node.log()));
    assert!(
        warning.contains("WARN") && warning.contains("open_files=256"),
        "{warning}"
    );
}

#[test]
fn ci_builds_the_binary_as_the_image_does() {
    let build = image().build;
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );
    let ci = read(".ci/deploy");
    assert!(
        ci.lines().any(|l| l.trim() == build),
        ".ci/deploy does not run the Dockerfile's `{build}`"
    );
}

/// The gateway nodes' environment in docker-compose.yml (services built from the image).
fn compose_nodes() -> Vec<(String, Vec<(String, String)>)> {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    let nodes: Vec<_> = services
        .iter()
        .filter(|(_, s)| s["build"] == json!("."))
        .map(|(name, s)| {
            let env = s["environment"].as_object().expect("environment");
            let env = env.iter().map(|(k, v)| (k.clone(), scalar(v)));
            (name.clone(), env.collect())
        })
        .collect();
    assert!(!nodes.is_empty(), "no gateway in docker-compose.yml");
    nodes
}

/// A YAML scalar as the string a process would see in its environment.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn compose_opts_into_the_development_config_which_is_warned_about() {
    let image = image();
    let dev_path = image.destination_of("config/cascade.toml");
    let dev_file = read("config/cascade.toml");
    for (name, env) in compose_nodes() {
        let config_var = env.iter().find(|(k, _)| k == "CASCADE_CONFIG");
        assert_eq!(
            config_var.map(|(_, v)| v.as_str()),
            Some(dev_path),
            "{name} opts into the image's development config"
        );
        let c = config(&image, &dev_file, &env);
        assert!(c.demo && c.uses_development_secret(), "{name}");
        assert!(c.listen.ip().is_unspecified(), "{name}: {}", c.listen);
    }

    // Started as compose starts a node, with this repository's file for the image's and
    // the test's Redis for compose's.
    let (_, env) = compose_nodes().remove(0);
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cascade.toml");
    let start = |extra: &[(&str, &str)]| {
        let mut command = image.command();
        command.envs(env.iter().filter(|(k, _)| k != "CASCADE_LISTEN").cloned());
        command.env("CASCADE_CONFIG", &file);
        command.env("CASCADE_REDIS_URL", redis_url());
        command.envs(extra.iter().copied());
        Node::start(command)
    };
    let node = start(&[]);
    let warning = node.log().into_iter().find(|l| l.contains("INSECURE"));
    let warning = warning.unwrap_or_else(|| panic!("no warning in {:#?}", node.log()));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("CASCADE_TOKEN_HMAC_SECRET"), "{warning}");
    assert!(
        logged(&node, "/demo/login signs a token"),
        "{:#?}",
        node.log()
    );
    assert_eq!(status(http().get(node.url("/"))).await, 200, "the demo");
    let ready = node.url("/readyz");
    eventually("redis", || async {
        status(http().get(&ready)).await == 200
    })
    .await;
    assert_eq!(publish(&node, None).await.0, 200, "open publishing");

    // The development config with a secret of one's own: no secret warning.
    let node = start(&[(
        "CASCADE_TOKEN_HMAC_SECRET",
        "an-operator-secret-of-32-bytes!!",
    )]);
    assert!(!logged(&node, "INSECURE"), "{:#?}", node.log());
}

/// deploy/kubernetes/, by kind.
struct Manifests {
    by_kind: BTreeMap<String, Value>,
}

impl Manifests {
    fn load() -> Manifests {
        let kustomization = read("deploy/kubernetes/kustomization.yaml");
        let listed: Value = yaml("deploy/kubernetes/kustomization.yaml");
        for file in listed["resources"].as_array().expect("resources") {
            let file = file.as_str().expect("a file name");
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("deploy/kubernetes")
                    .join(file)
                    .exists(),
                "kustomization.yaml lists {file}, which does not exist"
            );
        }
        let mut by_kind = BTreeMap::new();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
        for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
            let name = entry.expect("entry").file_name().into_string().unwrap();
            if name == "kustomization.yaml" || !name.ends_with(".yaml") {
                continue;
            }
            // Listed, or listed commented out as optional.
            assert!(
                kustomization.contains(&format!("- {name}")),
                "{name} unlisted"
            );
            let doc = yaml(&format!("deploy/kubernetes/{name}"));
            let kind = doc["kind"].as_str().expect("kind").to_owned();
            assert!(by_kind.insert(kind.clone(), doc).is_none(), "two {kind}s");
        }
        Manifests { by_kind }
    }

    fn get(&self, kind: &str) -> &Value {
        self.by_kind
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }

    fn pod(&self) -> &Value {
        &self.get("Deployment")["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    /// The container's environment, Secret values resolved (the placeholders shipped).
    fn env(&self) -> Vec<(String, String)> {
        assert!(
            self.container().get("envFrom").is_none(),
            "envFrom would pass every key of its source, named or not"
        );
        let secret = self.get("Secret");
        let entries = self.container()["env"].as_array().expect("env");
        entries
            .iter()
            .map(|e| {
                let name = e["name"].as_str().expect("name").to_owned();
                let value = if let Some(value) = e.get("value") {
                    scalar(value)
                } else {
                    let by = &e["valueFrom"]["secretKeyRef"];
                    assert_eq!(by["name"], secret["metadata"]["name"], "{name}");
                    let key = by["key"].as_str().expect("secretKeyRef.key");
                    let value = &secret["stringData"][key];
                    assert!(value.is_string(), "{name}: the Secret has no {key}");
                    scalar(value)
                };
                (name, value)
            })
            .collect()
    }

    /// The config file the ConfigMap mounts where CASCADE_CONFIG says.
    fn config_file(&self) -> String {
        let env = self.env();
        let path = &env
            .iter()
            .find(|(k, _)| k == "CASCADE_CONFIG")
            .expect("CASCADE_CONFIG")
            .1;
        let (dir, file) = path.rsplit_once('/').expect("a path");
        let mount = self.container()["volumeMounts"].as_array().expect("mounts");
        let mount = mount.iter().find(|m| m["mountPath"] == json!(dir));
        let volume_name = &mount.expect("a volume mounted at CASCADE_CONFIG's folder")["name"];
        let volumes = self.pod()["volumes"].as_array().expect("volumes");
        let volume = volumes
            .iter()
            .find(|v| &v["name"] == volume_name)
            .expect("volume");
        let map = self.get("ConfigMap");
        assert_eq!(volume["configMap"]["name"], map["metadata"]["name"]);
        map["data"][file]
            .as_str()
            .expect("the ConfigMap holds the file")
            .to_owned()
    }

    /// The number of a container port named `name`, or `name` as a number.
    fn port(&self, name: &Value) -> u64 {
        if let Some(n) = name.as_u64() {
            return n;
        }
        let ports = self.container()["ports"].as_array().expect("ports");
        let port = ports.iter().find(|p| &p["name"] == name);
        port.unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    }
}

/// `512Mi` and friends in bytes.
fn quantity(text: &str) -> u64 {
    let units = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)];
    for (suffix, scale) in units {
        if let Some(n) = text.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a quantity") * scale;
        }
    }
    text.parse().unwrap_or_else(|_| panic!("quantity {text}"))
}

/// Memory a pod must have per allowed connection, and for the process itself. A
/// WebSocket, the dearest transport, holds 3.7 KiB idle and 12.2 KiB once a burst of
/// messages grew its buffers (BENCHMARKS.md, "Idle memory per connection" and "After a
/// burst"), and its socket 2.5 to 4.7 KiB of kernel memory, which counts in the pod's
/// cgroup too (README.md, "Deploy"); 24 KiB leaves room for queued messages. The process
/// starts at about 2 MiB.
const KIB_PER_CONNECTION: u64 = 24;
const PROCESS_MIB: u64 = 32;

#[test]
fn kubernetes_manifests_agree_with_the_gateway_and_with_each_other() {
    let k = Manifests::load();
    let image = image();
    let env = k.env();
    let c = config(&image, &k.config_file(), &env);

    // Only variables the gateway knows (from_sources refused the others), and no Service
    // link variables (a Service named cascade would add CASCADE_PORT and others).
    assert_eq!(k.pod()["enableServiceLinks"], json!(false));
    assert!(
        !env.iter()
            .any(|(name, _)| name.starts_with("CASCADE_HOOKS"))
    );
    let secret = read("deploy/kubernetes/secret.yaml");
    assert!(
        secret.contains("# hooks-secret"),
        "the coming hooks' entry, commented"
    );
    for key in ["api-keys", "token-hmac-secret", "token-ticket-secret"] {
        assert!(k.get("Secret")["stringData"][key].is_string(), "{key}");
    }
    assert!(!c.uses_development_secret() && !c.demo);
    assert_eq!(c.engine, cascade::config::EngineKind::Redis);

    // The image's user, not root.
    let security = &k.pod()["securityContext"];
    assert_ne!(image.user.0, 0);
    assert_eq!(security["runAsUser"], json!(image.user.0));
    assert_eq!(security["runAsGroup"], json!(image.user.1));
    assert_eq!(security["runAsNonRoot"], json!(true));

    // The image's entrypoint and command.
    let container = k.container();
    assert!(
        container.get("command").is_none(),
        "the entrypoint is the image's"
    );
    assert_eq!(container["args"], json!(image.cmd));

    // One port: listened on, probed, scraped and served.
    let port = u64::from(c.listen.port());
    assert!(c.listen.ip().is_unspecified());
    assert_eq!(k.port(&json!("http")), port);
    let readiness = &container["readinessProbe"]["httpGet"];
    let liveness = &container["livenessProbe"]["httpGet"];
    assert_eq!(readiness["path"], json!("/readyz"));
    assert_eq!(liveness["path"], json!("/healthz"));
    assert_eq!(k.port(&readiness["port"]), port);
    assert_eq!(k.port(&liveness["port"]), port);
    let annotations = &k.get("Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], json!("true"));
    assert_eq!(annotations["prometheus.io/port"], json!(port.to_string()));
    assert_eq!(annotations["prometheus.io/path"], json!("/metrics"));
    let service_port = &k.get("Service")["spec"]["ports"][0]["targetPort"];
    assert_eq!(k.port(service_port), port);

    // Everything that selects the pods selects them.
    let labels = &k.get("Deployment")["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        let selector = selector.as_object().expect("a selector");
        assert!(!selector.is_empty());
        selector.iter().all(|(key, value)| &labels[key] == value)
    };
    assert!(selects(
        &k.get("Deployment")["spec"]["selector"]["matchLabels"]
    ));
    assert!(selects(&k.get("Service")["spec"]["selector"]));
    assert!(selects(
        &k.get("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    ));
    let target = &k.get("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"];
    assert_eq!(target["name"], k.get("Deployment")["metadata"]["name"]);

    // The drain fits: the preStop pause, then the drain, then room to exit, before the
    // kubelet's SIGKILL; clients are told to leave well before the drain's deadline; and
    // a draining pod, which accepts no connection, is not restarted by its liveness probe.
    let pause = &container["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(pause[0], json!("sleep"));
    let pause: u64 = pause[1].as_str().expect("seconds").parse().unwrap();
    let drain = c.shutdown.drain_deadline_ms.div_ceil(1000);
    let grace = k.pod()["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        pause + drain + 5 <= grace,
        "{pause} + {drain} + 5 > {grace}"
    );
    assert!(c.shutdown.reconnect_window_ms < c.shutdown.drain_deadline_ms);
    let probe = &container["livenessProbe"];
    let period = probe["periodSeconds"].as_u64().unwrap();
    let failures = probe["failureThreshold"].as_u64().unwrap();
    assert!(
        period * failures > drain,
        "liveness would restart a draining pod"
    );

    // Memory: limited as requested, and enough for limits.max_connections.
    let resources = &container["resources"];
    let limit = quantity(
        resources["limits"]["memory"]
            .as_str()
            .expect("a memory limit"),
    );
    assert_eq!(
        resources["requests"]["memory"],
        resources["limits"]["memory"]
    );
    let needed = (PROCESS_MIB << 20) + c.limits.max_connections as u64 * KIB_PER_CONNECTION * 1024;
    assert!(
        needed <= limit,
        "{} connections need {needed} bytes, the pod has {limit}",
        c.limits.max_connections
    );
}

#[tokio::test]
async fn the_kubernetes_pod_starts_and_answers_its_probes() {
    let k = Manifests::load();
    let image = image();
    let file: PathBuf =
        std::env::temp_dir().join(format!("cascade-k8s-{}.toml", std::process::id()));
    std::fs::write(&file, k.config_file()).expect("write the ConfigMap's file");
    let mut command = image.command();
    // The pod's environment and file, with the test's Redis and a log the harness reads.
    for (key, value) in k.env() {
        if key != "CASCADE_LOG_FORMAT" {
            command.env(key, value);
        }
    }
    command.env("CASCADE_CONFIG", &file);
    command.env("CASCADE_REDIS_URL", redis_url());
    command.env("CASCADE_LISTEN", "127.0.0.1:0");
    let node = Node::start(command);
    let _ = std::fs::remove_file(&file);
    // The Secret's placeholders are empty: safe, and said to be useless.
    assert!(logged(&node, "nothing can publish"), "{:#?}", node.log());
    assert!(!logged(&node, "INSECURE"), "{:#?}", node.log());
    let container = k.container();
    // Live at once; ready once its Redis connection is up, as the kubelet would see.
    let liveness = container["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(
        status(http().get(node.url(liveness))).await,
        200,
        "{liveness}"
    );
    let readiness = container["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap();
    let ready = node.url(readiness);
    eventually(readiness, || async {
        status(http().get(&ready)).await == 200
    })
    .await;
    let annotations = &k.get("Deployment")["spec"]["template"]["metadata"]["annotations"];
    let metrics = annotations["prometheus.io/path"].as_str().unwrap();
    assert_eq!(status(http().get(node.url(metrics))).await, 200);
    assert_eq!(publish(&node, None).await.0, 401);
}
