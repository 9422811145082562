//! TLS on private nodes with certificates the test makes (`openssl`): a
//! broker certificate from a trusted CA connects and delivers; one from
//! another CA, for another host name, or expired is refused with an error
//! that says which; a client certificate logs in with EXTERNAL (mutual
//! TLS), and one from a CA the broker does not trust is refused.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, ErrorKind, Event, ExchangeKind, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "tls.ping")]
struct Ping {
    n: u32,
}

/// The login name of the client certificate (its common name).
const CLIENT: &str = "tidings-test.client";
/// A vhost only the client certificate's user may use.
const MTLS_VHOST: &str = "tidings-test.mtls";

/// Certificates made for one test, in a directory of its own.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(common::unique("pki"));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("cannot run openssl: these tests make their certificates with it (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A self-signed CA `<name>.pem` with its key `<name>.key`.
    fn ca(&self, name: &str) -> &Self {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=tidings-test {name}"),
        ]);
        self
    }

    /// A key `<name>.key` and a request `<name>.csr` for `cn`, and the
    /// extensions `<name>.ext` of its certificate.
    fn request(&self, name: &str, cn: &str, extensions: &str) {
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        std::fs::write(self.path(&format!("{name}.ext")), extensions).unwrap();
    }

    /// `<name>.pem`, for `cn`, signed by `ca`, valid for two days from now.
    fn issue(&self, name: &str, cn: &str, extensions: &str, ca: &str) -> &Self {
        self.request(name, cn, extensions);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
        self
    }

    /// `<name>.pem`, for `cn`, signed by `ca`, valid for one day in 2020.
    fn issue_expired(&self, name: &str, cn: &str, extensions: &str, ca: &str) -> &Self {
        self.request(name, cn, extensions);
        let conf = format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {dir}/index.txt\nnew_certs_dir = {dir}\n\
             serial = {dir}/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n\
             [p]\ncommonName = supplied\n",
            dir = self.dir.display()
        );
        std::fs::write(self.path("ca.cnf"), conf).unwrap();
        std::fs::write(self.path("index.txt"), "").unwrap();
        std::fs::write(self.path("serial"), "01\n").unwrap();
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            &format!("{ca}.pem"),
            "-keyfile",
            &format!("{ca}.key"),
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.pem"),
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-extfile",
            &format!("{name}.ext"),
            "-notext",
        ]);
        self
    }
}

const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
                          keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n";
const CLIENT_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";

/// A private node with a TLS listener serving `server.pem`, trusting
/// `ca.pem` for client certificates (asked for, not required), with the
/// EXTERNAL login by the certificate's common name; and its TLS port.
fn tls_node(pki: &Pki, server_cert: &str) -> (common::PrivateNode, u16) {
    let port = common::free_port();
    let conf = format!(
        "listeners.ssl.default = {port}\n\
         ssl_options.cacertfile = {ca}\n\
         ssl_options.certfile = {cert}\n\
         ssl_options.keyfile = {key}\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = false\n\
         auth_mechanisms.1 = PLAIN\n\
         auth_mechanisms.2 = AMQPLAIN\n\
         auth_mechanisms.3 = EXTERNAL\n\
         ssl_cert_login_from = common_name\n",
        ca = pki.path("ca.pem").display(),
        cert = pki.path(&format!("{server_cert}.pem")).display(),
        key = pki.path(&format!("{server_cert}.key")).display(),
    );
    let node = common::PrivateNode::start_with_plugins(&conf, &["rabbitmq_auth_mechanism_ssl"]);
    (node, port)
}

/// Props for the node's TLS port at `host`, trusting `ca`.
fn tls_props(host: &str, port: u16, ca: &Path) -> AmqpProps {
    AmqpProps::default()
        .with_host(host)
        .with_port(port)
        .with_ca_file(ca)
        .with_exchange(common::unique("ex"), ExchangeKind::Fanout)
        .with_connect_timeout(Duration::from_secs(10))
}

/// Connects a bus, publishes and receives one event through the broker.
async fn round_trip(props: &AmqpProps) {
    let subscribers = Subscribers::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _guard = subscribers.subscribe(move |p: &Ping| s.lock().unwrap().push(p.n));
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", props.redacted_url()));
    bus.publish_confirmed(&Ping { n: 7 }).await.unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || *seen.lock().unwrap() == [7]).await,
        "the event did not come back over TLS: {:?}",
        seen.lock().unwrap()
    );
    bus.close().await.unwrap();
}

/// Connecting fails with a connect error whose message has every one of
/// `needed`; returns it.
async fn refused(props: &AmqpProps, needed: &[&str]) -> String {
    let err = Bus::with_props(props.clone())
        .subscribers(Subscribers::new())
        .publish_only()
        .connect()
        .await
        .expect_err("the connection was not refused");
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Connect, "{text}");
    for needed in needed {
        assert!(text.contains(needed), "{needed:?} not in: {text}");
    }
    assert!(!text.contains("broker is running"), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_the_broker_by_ca_and_host_name_and_mutual_tls_logs_in_with_external() {
    let pki = Pki::new();
    pki.ca("ca")
        .ca("other-ca")
        .issue("server", "127.0.0.1", SERVER_EXT, "ca")
        .issue("client", CLIENT, CLIENT_EXT, "ca")
        .issue("stranger", CLIENT, CLIENT_EXT, "other-ca");
    let (node, port) = tokio::task::spawn_blocking({
        let pki = Pki {
            dir: pki.dir.clone(),
        };
        move || {
            let (node, port) = tls_node(&pki, "server");
            node.ctl(&["add_user", CLIENT, "unused-password"]);
            node.ctl(&["clear_password", CLIENT]);
            node.ctl(&["add_vhost", MTLS_VHOST]);
            node.ctl(&[
                "set_permissions",
                "-p",
                MTLS_VHOST,
                CLIENT,
                ".*",
                ".*",
                ".*",
            ]);
            (node, port)
        }
    })
    .await
    .unwrap();
    let ca = pki.path("ca.pem");

    // The right CA: connects, delivers.
    round_trip(&tls_props("127.0.0.1", port, &ca)).await;

    // Another CA's view: the broker's certificate is not one it trusts.
    let text = refused(
        &tls_props("127.0.0.1", port, &pki.path("other-ca.pem")),
        &[
            "a CA this client does not trust",
            "UnknownIssuer",
            "check the CA file",
        ],
    )
    .await;
    eprintln!("wrong CA: {text}");

    // Another host name for the same broker: the certificate names only
    // 127.0.0.1.
    let text = refused(
        &tls_props("localhost", port, &ca),
        &["does not name the host", "localhost"],
    )
    .await;
    eprintln!("wrong host: {text}");

    // Mutual TLS with EXTERNAL: the user is the certificate's common name,
    // the only user with access to this vhost (the props' guest has none).
    let mtls = tls_props("127.0.0.1", port, &ca)
        .with_vhost(MTLS_VHOST)
        .with_client_cert(pki.path("client.pem"), pki.path("client.key"))
        .with_external_auth(true);
    round_trip(&mtls).await;
    let url = mtls.redacted_url();
    assert!(
        url.contains("certfile=") && url.contains("auth_mechanism=external"),
        "{url}"
    );
    let from_url = AmqpProps::from_url(&url.replace("***", "guest")).unwrap();
    assert_eq!(from_url.client_cert(), mtls.client_cert());
    assert!(from_url.external_auth());

    // Without EXTERNAL, the same certificate is only TLS: the password
    // login (guest) has no access to that vhost.
    let err = Bus::with_props(mtls.clone().with_external_auth(false))
        .subscribers(Subscribers::new())
        .publish_only()
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");

    // A client certificate from a CA the broker does not trust is refused.
    let text = refused(
        &tls_props("127.0.0.1", port, &ca)
            .with_vhost(MTLS_VHOST)
            .with_client_cert(pki.path("stranger.pem"), pki.path("stranger.key"))
            .with_external_auth(true),
        &["client", "certificate"],
    )
    .await;
    eprintln!("untrusted client certificate: {text}");

    // EXTERNAL without a certificate, and a key that is no key, are
    // refused before connecting, by name.
    let err = AmqpProps::from_url(&format!(
        "amqps://127.0.0.1:{port}/?auth_mechanism=external"
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("set certfile and keyfile"),
        "{err}"
    );
    let err = Bus::with_props(
        tls_props("127.0.0.1", port, &ca)
            .with_client_cert(pki.path("client.pem"), pki.path("client.csr")),
    )
    .publish_only()
    .connect()
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(
        err.to_string().contains("client.csr holds no private key"),
        "{err}"
    );

    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_broker_certificate_is_refused_as_expired() {
    let pki = Pki::new();
    pki.ca("ca")
        .issue_expired("expired", "127.0.0.1", SERVER_EXT, "ca");
    let (node, port) = tokio::task::spawn_blocking({
        let pki = Pki {
            dir: pki.dir.clone(),
        };
        move || tls_node(&pki, "expired")
    })
    .await
    .unwrap();
    let text = refused(
        &tls_props("127.0.0.1", port, &pki.path("ca.pem")),
        &["it has expired", "certificate expired"],
    )
    .await;
    eprintln!("expired: {text}");
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&pki.dir);
}
