#!/usr/bin/env python3
"""Shows the test broker's "earliest" quirk (why Sluice's Kafka tests read from offset 0).

tansu 0.6.0 with its in-memory store answers ListOffsets(earliest) with the offset of
the record batch whose object was *written* first, not the lowest offset. Batches of
concurrent transactional producers are written out of offset order, so "earliest" can
name a later batch and a reader starting there skips the first ones. This races a few
transactional producers into fresh one-partition topics and counts the topics whose
"earliest" is not 0 (a real Kafka broker always says 0 here). Nothing of Sluice runs.

    eval "$(scripts/infra/kafka.sh start)"
    ~/.cache/sluice-infra/bench-venv/bin/python scripts/infra/kafka-earliest-quirk.py [topics]

(needs confluent-kafka; the bench venv has it). Session 9, fresh broker: 2 and 6 topics
of 60 said earliest = 5 while reading from offset 0 found their first record at 0.
"""
import os
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PRODUCERS = 8
RECORDS = 5
# Transactional ids registered first: the broker rewrites its whole transaction
# metadata between taking a batch's offset and writing the batch, so more of it
# widens the window in which batches land out of order.
BALLAST = 100


def first_offset(brokers, topic):
    """The offset of the first record read from offset 0."""
    reader = Consumer({"bootstrap.servers": brokers, "group.id": f"quirk-reader-{topic}"})
    reader.assign([TopicPartition(topic, 0, 0)])
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            m = reader.poll(0.5)
            if m is not None and not m.error():
                return m.offset()
        return None
    finally:
        reader.close()


def main():
    brokers = os.environ["SLUICE_TEST_KAFKA_BROKERS"]
    topics = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    admin = AdminClient({"bootstrap.servers": brokers})
    run = uuid.uuid4().hex[:6]
    for k in range(BALLAST):
        Producer({"bootstrap.servers": brokers, "transactional.id": f"quirk-{run}-ballast-{k}"}).init_transactions(10)
    producers = []
    for k in range(PRODUCERS):
        p = Producer({"bootstrap.servers": brokers, "transactional.id": f"quirk-{run}-{k}", "linger.ms": 0})
        p.init_transactions(10)
        producers.append(p)
    lister = Consumer({"bootstrap.servers": brokers, "group.id": f"quirk-{run}"})
    wrong = 0
    for _ in range(topics):
        topic = f"quirk-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
        time.sleep(0.2)

        def write(p, k):
            p.begin_transaction()
            for i in range(RECORDS):
                p.produce(topic, value=f"{k}-{i}".encode(), partition=0)
            p.commit_transaction(10)

        threads = [threading.Thread(target=write, args=(p, k)) for k, p in enumerate(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        low, high = lister.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        if low != 0:
            wrong += 1
            first = first_offset(brokers, topic)
            print(f"{topic}: the broker says earliest = {low} (high {high}); reading from 0 finds a record at {first}")
    lister.close()
    print(f"topics whose 'earliest' was not offset 0: {wrong} of {topics}")


if __name__ == "__main__":
    main()
