//! A reply that does not decode: the caller gets a clear `Decode` error
//! that says the server did handle the request, and the bus goes on. The
//! server here is a foreign one (the AMQP core and raw lapin) answering
//! with garbage.

use serde::{Deserialize, Serialize};
use tidings::lapin::BasicProperties;
use tidings::lapin::types::{AMQPValue, FieldTable, ShortString};
use tidings::{Bus, Connection, ErrorKind, Event, ExchangeKind, Queue, Request, TAG_HEADER};

use crate::common;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "rpc_bad_reply.ask")]
struct Ask {
    n: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "rpc_bad_reply.answer")]
struct Answer {
    n: u64,
}

impl Request for Ask {
    type Reply = Answer;
}

#[tokio::test]
async fn a_reply_that_does_not_decode_is_a_clear_error_not_the_servers_fault() {
    let props = common::props(ExchangeKind::Topic);
    common::require_broker(&props);
    let cleanup = common::Cleanup::new(&props);
    // The queue servers of `Ask` share.
    let queue = format!("{}.rpc.rpc_bad_reply.ask", props.exchange());
    cleanup.queue(&queue);
    let conn = Connection::connect(&props).await.unwrap();
    let mut requests = conn
        .consumer(&Queue::durable(&queue).unbound())
        .await
        .unwrap();
    let replies = common::confirming_channel(&conn).await;
    let server = tokio::spawn(async move {
        let request = common::next_delivery(&mut requests).await;
        let properties = request.properties();
        let reply_to = properties
            .reply_to()
            .clone()
            .expect("a request has reply-to");
        let correlation = properties
            .correlation_id()
            .clone()
            .expect("a request has a correlation id");
        let mut headers = FieldTable::default();
        headers.insert(
            TAG_HEADER.into(),
            AMQPValue::LongString("rpc_bad_reply.answer".into()),
        );
        let reply = BasicProperties::default()
            .with_correlation_id(correlation)
            .with_content_type(ShortString::from("application/x-bincode"))
            .with_headers(headers);
        common::raw_publish(&replies, "", reply_to.as_str(), &[0xff, 0xff, 0xff], reply).await;
        request.ack().await.unwrap();
    });

    let bus = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    let err = bus.call(&Ask { n: 1 }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    let text = err.to_string();
    assert!(text.contains("rpc_bad_reply.ask"), "{text}");
    assert!(text.contains("the server handled the request"), "{text}");
    server.await.unwrap();
    assert_eq!(bus.health().last_error, None);
    bus.close().await.unwrap();
    conn.close().await.unwrap();
}
