"""Reference "worker" of the voting app, as unforgiving as upstream's.

It behaves as the upstream worker (worker/Program.cs of
dockersamples/example-voting-app) does, so that a test can see a vote lost:

* it opens the postgres connection first (host "db", postgres/postgres),
  retrying every second until it opens, and creates table votes; then it
  connects to redis (host "redis");
* every 100 ms it reconnects redis if down, then pops one vote from the left
  of the list "votes" (LPOP, not blocking);
* a vote popped while the db connection is not open is not written: the
  worker reconnects and the vote is lost;
* otherwise it INSERTs the vote, and on a database error tries an UPDATE;
  an error there ends the process with 1 (the vote is lost);
* with no vote it runs the keep-alive `SELECT 1` on the connection it opened
  first (as upstream's keep-alive command stays bound to it); an error there
  ends the process with 1;
* SIGTERM ends the process at once, whatever it holds (as the .NET runtime
  does for upstream's worker).
"""

import json
import signal
import socket
import sys
import time
import traceback

import psycopg2
import redis

POSTGRES_HOST = "db"
REDIS_HOST = "redis"
# Npgsql's defaults: 15 s to open a connection, 30 s for a command (the TCP
# user timeout gives up on a command whose host no longer answers).
DB_DSN = ("host=%s port=5432 user=postgres password=postgres dbname=postgres "
          "connect_timeout=15 tcp_user_timeout=30000" % POSTGRES_HOST)
# StackExchange.Redis's defaults: 5 s to connect, 5 s for a command.
REDIS_TIMEOUT_S = 5

SCHEMA = ("CREATE TABLE IF NOT EXISTS votes ("
          "id VARCHAR(255) NOT NULL UNIQUE, vote VARCHAR(255) NOT NULL)")
INSERT = "INSERT INTO votes (id, vote) VALUES (%s, %s)"
UPDATE = "UPDATE votes SET vote = %s WHERE id = %s"


def out(msg):
    print(msg, flush=True)


def err(msg):
    print(msg, file=sys.stderr, flush=True)


def open_db_connection():
    """Retries every second until postgres takes the connection."""
    while True:
        try:
            conn = psycopg2.connect(DB_DSN)
            break
        except psycopg2.Error:
            err("Waiting for db")
            time.sleep(1)
    err("Connected to db")
    # Npgsql runs each command in its own transaction: a failed INSERT
    # leaves the connection usable for the UPDATE.
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(SCHEMA)
    return conn


def is_open(conn):
    return conn.closed == 0


class RedisLink:
    """One redis connection, and whether it is up (upstream's
    ConnectionMultiplexer.IsConnected)."""

    def __init__(self, ip):
        self.client = redis.Redis(host=ip, port=6379, db=0,
                                  socket_connect_timeout=REDIS_TIMEOUT_S,
                                  socket_timeout=REDIS_TIMEOUT_S,
                                  single_connection_client=True)

    def is_connected(self):
        try:
            return self.client.ping()
        except redis.RedisError:
            return False


def open_redis_connection(hostname):
    ip = socket.gethostbyname(hostname)
    out("Found redis at %s" % ip)
    while True:
        err("Connecting to redis")
        link = RedisLink(ip)
        if link.is_connected():
            return link
        err("Waiting for redis")
        time.sleep(1)


def update_vote(conn, voter_id, vote):
    with conn.cursor() as cur:
        try:
            cur.execute(INSERT, (voter_id, vote))
        except psycopg2.Error:
            cur.execute(UPDATE, (vote, voter_id))


def main():
    pgsql = open_db_connection()
    link = open_redis_connection(REDIS_HOST)
    keep_alive = pgsql
    while True:
        # Slow down as upstream does: one vote every 100 ms at most.
        time.sleep(0.1)
        if not link.is_connected():
            out("Reconnecting Redis")
            link = open_redis_connection(REDIS_HOST)
        raw = link.client.lpop("votes")
        if raw is not None:
            data = json.loads(raw)
            voter_id, vote = str(data["voter_id"]), str(data["vote"])
            out("Processing vote for '%s' by '%s'" % (vote, voter_id))
            if not is_open(pgsql):
                # The vote just popped is not written.
                out("Reconnecting DB")
                pgsql = open_db_connection()
            else:
                update_vote(pgsql, voter_id, vote)
        else:
            with keep_alive.cursor() as cur:
                cur.execute("SELECT 1")


if __name__ == "__main__":
    # Stopping the container ends the worker at once, between two votes or
    # not: what it popped and did not write is lost.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        main()
    except Exception:  # pylint: disable=broad-except
        err(traceback.format_exc())
        sys.exit(1)
