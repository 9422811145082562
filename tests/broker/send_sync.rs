//! Public handles and the futures of their async methods are `Send` (and
//! handles `Sync`), so they work in spawned tasks. Checked at compile time.

use tidings::{
    AmqpProps, Bus, BusBuilder, Confirm, Connection, ConnectionEvent, ConnectionEvents, Consumer,
    ConsumerThread, Context, Delivery, Dispatch, Error, EventStream, Producer, Publish, Queue,
    Stats, Subscribers, Subscription, WhenFull, blocking,
};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>(_: &T) {}
fn send_only<T: Send>() {}

#[derive(tidings::Event, serde::Serialize, serde::Deserialize, Debug, Clone)]
struct Ping;

#[test]
fn public_types_are_send_and_sync() {
    send_sync::<AmqpProps>();
    send_sync::<Bus>();
    send_sync::<BusBuilder>();
    send_sync::<Connection>();
    send_sync::<ConnectionEvent>();
    send_sync::<ConnectionEvents>();
    send_sync::<WhenFull>();
    send_sync::<Consumer>();
    send_sync::<ConsumerThread>();
    send_sync::<Context>();
    send_sync::<Delivery>();
    send_sync::<Dispatch>();
    send_sync::<Error>();
    send_sync::<EventStream<Ping>>();
    send_sync::<Producer>();
    send_sync::<Publish>();
    send_sync::<Queue>();
    send_sync::<Stats>();
    send_sync::<Subscribers>();
    send_sync::<Subscription>();
    send_sync::<blocking::Producer>();
    send_sync::<blocking::Consumer>();
    send_sync::<blocking::Bus>();
    send_only::<Confirm>();
}

#[allow(dead_code)] // compiled for its assertions, never run
async fn futures_are_send(
    bus: Bus,
    conn: Connection,
    producer: Producer,
    subscribers: Subscribers,
) {
    send(&Connection::connect(&AmqpProps::default()));
    send(&conn.consumer(&Queue::exclusive()));
    send(&producer.publish(&1u8));
    send(&producer.wait_for_confirms());
    send(&bus.send_to("inbox", &Ping));
    send(&bus.publish(&Ping));
    send(&bus.publish_confirmed(&Ping));
    send(&bus.close());
    send(&subscribers.notify(Ping));
    send(&Bus::connect("memory://x"));
}
