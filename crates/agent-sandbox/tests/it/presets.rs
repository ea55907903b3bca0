//! Presets with the real clients (the clients image): `pip install`, `npm
//! install` and `git clone https://` with their default configuration,
//! against one local HTTPS server standing in for pypi.org,
//! files.pythonhosted.org, registry.npmjs.org and github.com on port 443
//! (a loopback address of the test's own, reached through `resolve`
//! pins). Without the presets the same commands reach nothing.

use std::path::Path;
use std::time::Duration;

use agent_sandbox::policy::preset;
use agent_sandbox::{Sandbox, SandboxBuilder};

use crate::support::clients::{clients_image, write_fixtures, StaticHttps, TestCa};
use crate::support::docker::{engine_shared, tempdir};

/// The real hosts the three clients use by default.
const HOSTS: [&str; 4] = [
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "github.com",
];

/// Where the stand-in listens: a loopback address no other test uses.
const ADDR: &str = "127.0.14.1";

/// Lays the fixtures out as the real hosts serve them: `/simple/` (its
/// links to files.pythonhosted.org), `/packages/`, the npm packument at
/// `/sandbox-demo` (tarball under `/tarballs/`), and `/acme/demo.git`.
fn lay_out(root: &Path) {
    write_fixtures(root, "https://registry.npmjs.org");
    let mv = |from: &str, to: &str| {
        let to = root.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::rename(root.join(from), to).unwrap();
    };
    mv("pypi/simple", "simple");
    mv("pypi/packages", "packages");
    mv("npm/sandbox-demo", "sandbox-demo");
    mv("npm/tarballs", "tarballs");
    mv("git/repo.git", "acme/demo.git");
    let index = root.join("simple/sandbox-demo/index.html");
    let html = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        html.replace(
            "../../packages/",
            "https://files.pythonhosted.org/packages/",
        ),
    )
    .unwrap();
}

/// Every host of the three presets is pinned to the stand-in's address on
/// each port a rule could allow, so no name is ever resolved or dialled
/// outside this machine, even one the clients do not use.
fn sandbox(fixtures: &Path) -> SandboxBuilder {
    let mut b = Sandbox::builder()
        .image(clients_image())
        .timeout(Duration::from_secs(240))
        .mount(fixtures, "/fixtures");
    for name in ["pypi", "npm", "github"] {
        for rule in &preset(name).unwrap().allow {
            let host = rule.split(':').next().unwrap();
            for port in [22, 80, 443] {
                b = b.resolve(host, port, ADDR);
            }
        }
    }
    b
}

const CLIENTS: &str = r#"set -e
cd /tmp
python3 -m venv /workspace/venv
/workspace/venv/bin/pip install -q --disable-pip-version-check --retries 0 --cert /fixtures/ca.pem sandbox-demo
/workspace/venv/bin/python -c 'import sandbox_demo; print(sandbox_demo.GREETING)'
mkdir app && cd app
npm install --no-audit --no-fund --loglevel=error --fetch-retries=0 --cafile /fixtures/ca.pem sandbox-demo
node -e 'console.log(require("sandbox-demo"))'
GIT_SSL_CAINFO=/fixtures/ca.pem git clone -q https://github.com/acme/demo.git /tmp/demo && cat /tmp/demo/README
"#;

#[tokio::test]
async fn pypi_npm_and_github_presets_let_the_real_clients_install_and_clone() {
    let _engine = engine_shared().await;
    let ca = TestCa::new(&HOSTS);
    let server = StaticHttps::start_on(&ca, &format!("{ADDR}:443")).await;
    lay_out(&server.root);
    let fixtures = tempdir("preset-fixtures");
    std::fs::write(fixtures.join("ca.pem"), &ca.pem).unwrap();

    let out = sandbox(&fixtures)
        .allow_preset("pypi")
        .allow_preset("npm@1")
        .allow_preset("github")
        .run(CLIENTS)
        .await
        .unwrap();
    let text = out.stdout_str();
    for want in [
        "hello from the local index",
        "hello from the local registry",
        "cloned through agent-sandbox",
    ] {
        assert!(
            text.contains(want),
            "{want}:\n{text}\n{}\n{:#?}",
            out.stderr_str(),
            out.events
        );
    }
    assert_eq!(out.refusals().count(), 0, "{:#?}", out.events);
    let reached: std::collections::BTreeSet<&str> =
        out.events.iter().map(|e| e.host.as_str()).collect();
    assert_eq!(
        reached,
        HOSTS.into_iter().collect(),
        "every preset host was used"
    );

    // The control: the same commands and pins without the presets reach nothing.
    let before = server.connections();
    let out = sandbox(&fixtures)
        .run(CLIENTS.replace("set -e\n", ""))
        .await
        .unwrap();
    assert!(!out.stdout_str().contains("hello"), "{}", out.stdout_str());
    assert_eq!(
        server.connections(),
        before,
        "nothing was dialled without a preset"
    );
    let refused: std::collections::BTreeSet<&str> =
        out.refusals().map(|e| e.host.as_str()).collect();
    for h in ["pypi.org", "registry.npmjs.org", "github.com"] {
        assert!(refused.contains(h), "{h} refused: {refused:?}");
    }
}
