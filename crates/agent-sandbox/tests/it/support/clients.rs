//! What the real-client tests serve on the host's loopback: a test CA, one
//! static HTTPS server standing in for a package index, a registry and a
//! git host (paths `/pypi/`, `/npm/`, `/git/`), and an `sshd`. The clients
//! are the real ones in the clients image (`make image` builds it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{crypto::ring, ServerConfig};
use tokio_rustls::TlsAcceptor;

use super::docker::tempdir;

/// The image with real clients: `AGENT_SANDBOX_CLIENTS_IMAGE`, else the
/// one `make image` builds.
pub fn clients_image() -> String {
    std::env::var("AGENT_SANDBOX_CLIENTS_IMAGE")
        .unwrap_or_else(|_| "agent-sandbox/clients:bookworm".into())
}

/// A CA made for one test, and a server certificate it signed for `names`.
pub struct TestCa {
    /// The CA certificate, PEM (what each client is told to trust).
    pub pem: String,
    config: Arc<ServerConfig>,
}

impl TestCa {
    pub fn new(names: &[&str]) -> TestCa {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "agent-sandbox test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        leaf.distinguished_name.push(DnType::CommonName, names[0]);
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf.signed_by(&key, &ca).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], der)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TestCa {
            pem: ca.pem(),
            config: Arc::new(config),
        }
    }
}

impl TestCa {
    /// The server settings (certificate for the CA's names) with `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let mut c = (*self.config).clone();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// A static file server over TLS: `GET /a/b` is the file `root/a/b`
/// (`index.html` for a path ending in `/`; the query is ignored, which
/// makes a git repository's `info/refs` the dumb protocol's).
pub struct StaticHttps {
    pub port: u16,
    pub root: PathBuf,
    connections: Arc<AtomicUsize>,
    /// The `Authorization` header of every request that had one.
    authorizations: Arc<std::sync::Mutex<Vec<String>>>,
}

impl StaticHttps {
    pub async fn start(ca: &TestCa) -> StaticHttps {
        Self::start_on(ca, "127.0.0.1:0").await
    }

    /// [`StaticHttps::start`] on a given address (`127.0.14.1:443` stands
    /// in for a real host on its real port).
    pub async fn start_on(ca: &TestCa, addr: &str) -> StaticHttps {
        let root = tempdir("https-root");
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr} (the tests run as root): {e}"));
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let authorizations = Arc::new(std::sync::Mutex::new(Vec::new()));
        let acceptor = TlsAcceptor::from(ca.config.clone());
        let (count, served, auths) = (connections.clone(), root.clone(), authorizations.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, root, auths) = (acceptor.clone(), served.clone(), auths.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let root = root.clone();
                        if let Some(a) = req.headers().get("authorization") {
                            let a = String::from_utf8_lossy(a.as_bytes()).into_owned();
                            auths.lock().unwrap().push(a);
                        }
                        async move { Ok::<_, Infallible>(serve_file(&root, req.uri().path())) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        StaticHttps {
            port,
            root,
            connections,
            authorizations,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn authorizations(&self) -> Vec<String> {
        self.authorizations.lock().unwrap().clone()
    }
}

fn serve_file(root: &Path, path: &str) -> Response<Full<Bytes>> {
    let mut rel = path.trim_start_matches('/').to_owned();
    if rel.is_empty() || rel.ends_with('/') {
        rel.push_str("index.html");
    }
    let mut file = root.join(&rel);
    if file.is_dir() {
        file = file.join("index.html");
    }
    let body = (!rel.split('/').any(|c| c == ".."))
        .then(|| std::fs::read(&file).ok())
        .flatten();
    let Some(body) = body else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let kind = if rel.ends_with(".html") {
        "text/html"
    } else if body.starts_with(b"{") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert("content-type", kind.parse().unwrap());
    r
}

/// Writes what the package clients fetch under the server's root: a real
/// wheel and its simple index (`pypi/`), a real npm tarball and its
/// packument (`npm/`, tarball URL on `npm_base`), and a git repository
/// served the dumb way (`git/repo.git`, also returned for ssh tests).
pub fn write_fixtures(root: &Path, npm_base: &str) -> PathBuf {
    let script = r#"
import base64, hashlib, io, json, os, sys, tarfile, zipfile
root, npm_base = sys.argv[1], sys.argv[2]
def b64(d): return base64.urlsafe_b64encode(d).rstrip(b"=").decode()
name, ver = "sandbox_demo", "1.0"
files = {f"{name}/__init__.py": b'GREETING = "hello from the local index"\n',
         f"{name}-{ver}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: sandbox-demo\nVersion: {ver}\n".encode(),
         f"{name}-{ver}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: agent-sandbox-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
record = "".join(f"{p},sha256={b64(hashlib.sha256(d).digest())},{len(d)}\n" for p, d in files.items())
files[f"{name}-{ver}.dist-info/RECORD"] = (record + f"{name}-{ver}.dist-info/RECORD,,\n").encode()
whl = f"{name}-{ver}-py3-none-any.whl"
os.makedirs(f"{root}/pypi/packages", exist_ok=True)
os.makedirs(f"{root}/pypi/simple/sandbox-demo", exist_ok=True)
with zipfile.ZipFile(f"{root}/pypi/packages/{whl}", "w") as z:
    for p, d in files.items(): z.writestr(p, d)
digest = hashlib.sha256(open(f"{root}/pypi/packages/{whl}", "rb").read()).hexdigest()
open(f"{root}/pypi/simple/sandbox-demo/index.html", "w").write(
    f'<!DOCTYPE html><html><body><a href="../../packages/{whl}#sha256={digest}">{whl}</a></body></html>\n')
open(f"{root}/pypi/simple/index.html", "w").write('<!DOCTYPE html><html><body><a href="sandbox-demo/">sandbox-demo</a></body></html>\n')
pkg = {"name": "sandbox-demo", "version": "1.0.0", "main": "index.js"}
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz") as t:
    for p, d in {"package/package.json": json.dumps(pkg).encode(),
                 "package/index.js": b'module.exports = "hello from the local registry";\n'}.items():
        info = tarfile.TarInfo(p); info.size = len(d); info.mode = 0o644
        t.addfile(info, io.BytesIO(d))
tgz = buf.getvalue()
os.makedirs(f"{root}/npm/tarballs", exist_ok=True)
open(f"{root}/npm/tarballs/sandbox-demo-1.0.0.tgz", "wb").write(tgz)
dist = {"tarball": f"{npm_base}/tarballs/sandbox-demo-1.0.0.tgz",
        "integrity": "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode(),
        "shasum": hashlib.sha1(tgz).hexdigest()}
open(f"{root}/npm/sandbox-demo", "w").write(json.dumps(
    {"name": "sandbox-demo", "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": dict(pkg, dist=dist)}}))
"#;
    run_ok(
        Command::new("python3")
            .args(["-c", script])
            .arg(root)
            .arg(npm_base),
    );
    let git = root.join("git");
    std::fs::create_dir_all(&git).unwrap();
    let work = tempdir("git-work");
    let g = |dir: &Path, args: &[&str]| {
        run_ok(
            Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t.test"])
                .args(["-c", "init.defaultBranch=main", "-c", "safe.directory=*"])
                .current_dir(dir)
                .args(args),
        )
    };
    g(&work, &["init", "-q"]);
    std::fs::write(work.join("README"), "cloned through agent-sandbox\n").unwrap();
    g(&work, &["add", "README"]);
    g(&work, &["commit", "-qm", "first"]);
    g(
        &git,
        &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"],
    );
    let bare = git.join("repo.git");
    g(&bare, &["update-server-info"]);
    let _ = std::fs::remove_dir_all(&work);
    // Readable by the sandbox user through a mount.
    run_ok(Command::new("chmod").args(["-R", "a+rX"]).arg(root));
    bare
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An `sshd` on a loopback port for one test, accepting one key for the
/// current user, with git on its PATH. Killed on drop.
pub struct Sshd {
    pub port: u16,
    pub user: String,
    /// The client's private key (OpenSSH format).
    pub key: String,
    child: Child,
    _dir: PathBuf,
}

impl Sshd {
    pub fn start() -> Sshd {
        let dir = tempdir("sshd");
        let keygen = |name: &str| {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(dir.join(name)),
            )
        };
        keygen("host_key");
        keygen("client_key");
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let git = String::from_utf8(
            Command::new("git")
                .arg("--exec-path")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let bin = Command::new("sh")
            .args(["-c", "dirname \"$(command -v git)\""])
            .output()
            .unwrap();
        let path = format!(
            "{}:{}:/usr/bin:/bin",
            String::from_utf8_lossy(&bin.stdout).trim(),
            git.trim()
        );
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PermitRootLogin prohibit-password\nPidFile {d}/sshd.pid\nSetEnv PATH={path}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd (make setup installs openssh-server)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let key = std::fs::read_to_string(dir.join("client_key")).unwrap();
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        Sshd {
            port,
            user,
            key,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
