"""Reference "worker" of the voting app.

Pops votes from the left of the redis list "votes" (host "redis") and writes
them to postgres (host "db", user postgres, password postgres): one row per
voter in table votes, a later vote replacing the earlier one.
"""

import json
import sys
import time

import psycopg2
import redis

REDIS_HOST = "redis"
DB_DSN = "host=db port=5432 user=postgres password=postgres dbname=postgres connect_timeout=5"

SCHEMA = ("CREATE TABLE IF NOT EXISTS votes ("
          "id VARCHAR(255) NOT NULL UNIQUE, vote VARCHAR(255) NOT NULL)")
UPSERT = ("INSERT INTO votes (id, vote) VALUES (%s, %s) "
          "ON CONFLICT (id) DO UPDATE SET vote = EXCLUDED.vote")


def log(msg):
    print(msg, flush=True)


def connect_db():
    while True:
        try:
            conn = psycopg2.connect(DB_DSN)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(SCHEMA)
            log("connected to db")
            return conn
        except psycopg2.Error as exc:
            log("waiting for db: %s" % str(exc).strip())
            time.sleep(1)


def connect_redis():
    while True:
        try:
            r = redis.Redis(host=REDIS_HOST, port=6379, db=0,
                            socket_connect_timeout=5, socket_timeout=10)
            r.ping()
            log("connected to redis")
            return r
        except redis.RedisError as exc:
            log("waiting for redis: %s" % exc)
            time.sleep(1)


def main():
    r = connect_redis()
    conn = connect_db()
    while True:
        try:
            item = r.blpop("votes", timeout=1)
        except redis.RedisError as exc:
            log("redis lost: %s" % exc)
            time.sleep(1)
            r = connect_redis()
            continue
        if item is None:
            continue
        raw = item[1]
        try:
            vote = json.loads(raw)
            voter_id, choice = str(vote["voter_id"]), str(vote["vote"])
        except (ValueError, KeyError, TypeError):
            log("dropping malformed vote: %r" % raw)
            continue
        while True:
            try:
                with conn.cursor() as cur:
                    cur.execute(UPSERT, (voter_id, choice))
                log("processed vote for %s from %s" % (choice, voter_id))
                break
            except psycopg2.Error as exc:
                log("db lost: %s" % str(exc).strip())
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
                time.sleep(1)
                conn = connect_db()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
