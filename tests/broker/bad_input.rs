//! Bad input fails cleanly: wrong credentials, no broker, a broker that never
//! answers, and message bodies that cannot be decoded.

use crate::common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Connection, ErrorKind, ExchangeKind, Queue};
use tokio_stream::StreamExt;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Reading {
    sensor: String,
    value: i64,
}

#[tokio::test]
async fn wrong_password_is_an_authentication_error() {
    let props = common::props(ExchangeKind::Fanout).with_credentials("guest", "not-the-password");
    let err = Connection::connect(&props).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(!err.to_string().contains("not-the-password"), "{err}");
    assert!(
        err.to_string().contains("check the user name, password"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_vhost_is_refused() {
    let props = common::props(ExchangeKind::Fanout).with_vhost(common::unique("no-such-vhost"));
    let err = Connection::connect(&props).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    assert!(err.to_string().contains("virtual host"), "{err}");
}

#[tokio::test]
async fn closed_port_is_a_connect_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let props = AmqpProps::default().with_host("127.0.0.1").with_port(port);
    let err = Connection::connect(&props).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn silent_peer_times_out_within_the_connect_timeout() {
    // A listening socket nobody accepts from: the kernel completes the TCP
    // handshake, and then nothing is ever said.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let props = AmqpProps::default()
        .with_host("127.0.0.1")
        .with_port(port)
        .with_connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = Connection::connect(&props).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    // Liveness, not speed: without the timeout this would wait forever.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A server on a local port that answers every connection with `reply`
/// (after reading what the client sent first) and closes it.
async fn answering_server(reply: &'static [u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 512];
                let _ = socket.read(&mut first).await;
                let _ = socket.write_all(reply).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn an_http_server_is_not_an_amqp_server() {
    let port = answering_server(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    let props = AmqpProps::default()
        .with_host("127.0.0.1")
        .with_port(port)
        .with_connect_timeout(Duration::from_secs(5));
    let err = Connection::connect(&props).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    let message = err.to_string();
    assert!(message.contains("not an AMQP server"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains("timed out"), "{message}");
}

#[tokio::test]
async fn tls_to_a_server_without_tls_says_so() {
    let port = answering_server(b"AMQP\x00\x00\x09\x01").await;
    let props = AmqpProps::default()
        .with_host("127.0.0.1")
        .with_port(port)
        .with_tls(true)
        .with_connect_timeout(Duration::from_secs(5));
    let err = Connection::connect(&props).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    let message = err.to_string();
    assert!(message.contains("TLS"), "{message}");
    assert!(
        !message.contains("check that the broker is running"),
        "{message}"
    );
}

#[tokio::test]
async fn a_ca_file_without_a_certificate_is_a_config_error() {
    let dir = std::env::temp_dir().join(common::unique("ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let key_only = dir.join("key.pem");
    std::fs::write(
        &key_only,
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let garbled = dir.join("garbled.pem");
    std::fs::write(
        &garbled,
        "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    // Nothing listens here: the CA file is checked before connecting.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (file, says) in [
        (&empty, "no certificate"),
        (&key_only, "no certificate"),
        (&garbled, "not valid PEM"),
    ] {
        let props = AmqpProps::default()
            .with_host("127.0.0.1")
            .with_port(port)
            .with_ca_file(file);
        let err = Connection::connect(&props).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        let message = err.to_string();
        assert!(message.contains(says), "{message}");
        assert!(message.contains(&file.display().to_string()), "{message}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn long_names_from_users_are_errors_not_panics() {
    let props = common::props(ExchangeKind::Topic);
    let _cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let err = conn
        .consumer(&Queue::durable("q".repeat(300)))
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    let err = conn
        .consumer(&Queue::exclusive().bind("k".repeat(256)))
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    let producer = conn.producer().await.unwrap();
    let long_key = tidings::Publish::new().routing_key("r".repeat(256));
    assert!(
        producer
            .publish_with(&1u8, &long_key)
            .await
            .unwrap_err()
            .is_config()
    );
    let long_header = tidings::Publish::new().header("h".repeat(256), "v");
    assert!(
        producer
            .publish_with(&1u8, &long_header)
            .await
            .unwrap_err()
            .is_config()
    );
    let too_long = props
        .clone()
        .with_exchange("e".repeat(256), ExchangeKind::Fanout);
    assert!(
        Connection::connect(&too_long)
            .await
            .unwrap_err()
            .is_config()
    );
    conn.close().await.unwrap();
}

/// Publishes raw bytes with a chosen content type, as a foreign client would.
async fn publish_raw(conn: &Connection, queue: &str, body: &[u8], content_type: Option<&str>) {
    let channel = conn.channel().await.unwrap();
    let mut properties = BasicProperties::default();
    if let Some(content_type) = content_type {
        properties = properties.with_content_type(content_type.into());
    }
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn undecodable_deliveries_report_errors_and_the_consumer_goes_on() {
    let props = common::props(ExchangeKind::Fanout).with_max_message_size(1024);
    let _cleanup = common::Cleanup::new(&props);
    let conn = Connection::connect(&props).await.unwrap();
    let mut consumer = conn.consumer(&Queue::exclusive()).await.unwrap();
    let queue = consumer.queue().to_owned();
    let good = Reading {
        sensor: "t1".into(),
        value: -40,
    };

    let mut bomb = vec![0x02, 0xFD]; // a String of length 2^40 where `sensor` is expected
    bomb.extend_from_slice(&(1u64 << 40).to_le_bytes());
    bomb.extend_from_slice(&[0x61; 12]);
    let cases: Vec<(&str, Vec<u8>, Option<&str>, ErrorKind)> = vec![
        (
            "garbage",
            vec![0xFF; 7],
            Some("application/x-bincode"),
            ErrorKind::Decode,
        ),
        (
            "empty",
            Vec::new(),
            Some("application/x-bincode"),
            ErrorKind::Decode,
        ),
        (
            "length bomb",
            bomb,
            Some("application/x-bincode"),
            ErrorKind::Decode,
        ),
        (
            "json of the wrong shape",
            br#"{"sensor":1,"value":"x"}"#.to_vec(),
            Some("application/json"),
            ErrorKind::Decode,
        ),
        (
            "unknown content type",
            b"(dp0\n.".to_vec(),
            Some("application/python-pickle"),
            ErrorKind::UnknownContentType,
        ),
        (
            "no content type",
            b"{}".to_vec(),
            None,
            ErrorKind::UnknownContentType,
        ),
        (
            "too large",
            vec![b' '; 2048],
            Some("application/json"),
            ErrorKind::MessageTooLarge,
        ),
    ];
    for (_, body, content_type, _) in &cases {
        publish_raw(&conn, &queue, body, *content_type).await;
    }
    conn.producer()
        .await
        .unwrap()
        .publish_confirmed(&good)
        .await
        .unwrap();

    for (name, _, _, kind) in &cases {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("no delivery")
            .expect("consumer ended")
            .expect("the delivery itself must arrive");
        let err = delivery.decode::<Reading>().expect_err(name);
        assert_eq!(err.kind(), *kind, "{name}: {err}");
        assert!(err.is_decode(), "{name}");
        delivery.reject().await.unwrap();
    }
    let delivery = consumer.next().await.unwrap().unwrap();
    assert_eq!(delivery.decode::<Reading>().unwrap(), good);
    delivery.ack().await.unwrap();
    conn.close().await.unwrap();
}
