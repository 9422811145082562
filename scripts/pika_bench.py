"""The Python peer of examples/bench.rs: the same work with pika's
BlockingConnection (publish without confirms, ack every delivery).

Usage: pika_bench.py AMQP_URL EVENTS SIZE
Prints the end-to-end deliveries per second on its last line.
"""
import sys
import threading
import time

import pika

url, events, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
exchange = f"tidings.bench.pika.{time.time_ns()}"
params = pika.URLParameters(url)

consumer_conn = pika.BlockingConnection(params)
consumer = consumer_conn.channel()
consumer.exchange_declare(exchange, exchange_type="fanout", auto_delete=True)
queue = consumer.queue_declare("", exclusive=True).method.queue
consumer.queue_bind(queue, exchange)
consumer.basic_qos(prefetch_count=1000)
received = 0
done = threading.Event()


def on_message(channel, method, _properties, _body):
    global received
    channel.basic_ack(method.delivery_tag)
    received += 1
    if received == events:
        channel.stop_consuming()


consumer.basic_consume(queue, on_message)
thread = threading.Thread(target=consumer.start_consuming)
thread.start()

publisher_conn = pika.BlockingConnection(params)
publisher = publisher_conn.channel()
body = b"\x07" * size
started = time.perf_counter()
for _ in range(events):
    publisher.basic_publish(exchange, "", body)
thread.join(timeout=120)
elapsed = time.perf_counter() - started
if received != events:
    sys.exit(f"pika lost deliveries: {received} of {events}")
publisher_conn.close()
consumer_conn.close()
print(f"{events / elapsed:.0f}")
