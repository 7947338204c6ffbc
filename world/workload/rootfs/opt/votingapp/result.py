"""Reference "result" service of the voting app.

HTTP on port 80. Every second it reads
  SELECT vote, COUNT(id) AS count FROM votes GROUP BY vote
from postgres (host "db", user postgres, password postgres) and shows the
counts: HTML at /, JSON at /api/results.
"""

import html
import os
import threading
import time

import psycopg2
from flask import Flask, jsonify

OPTION_A = os.environ.get("OPTION_A", "Cats")
OPTION_B = os.environ.get("OPTION_B", "Dogs")
DB_DSN = "host=db port=5432 user=postgres password=postgres dbname=postgres connect_timeout=5"
QUERY = "SELECT vote, COUNT(id) AS count FROM votes GROUP BY vote"

app = Flask(__name__)
_state = {"a": 0, "b": 0, "connected": False, "updated": None}
_lock = threading.Lock()


def poll():
    conn = None
    while True:
        try:
            if conn is None or conn.closed:
                conn = psycopg2.connect(DB_DSN)
                conn.autocommit = True
                print("connected to db", flush=True)
            counts = {"a": 0, "b": 0}
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('votes')")
                if cur.fetchone()[0] is not None:  # the worker makes the table
                    cur.execute(QUERY)
                    for vote, count in cur.fetchall():
                        counts[vote] = int(count)
            with _lock:
                _state.update(counts, connected=True, updated=time.time())
        except psycopg2.Error as exc:
            print("waiting for db: %s" % str(exc).strip(), flush=True)
            with _lock:
                _state["connected"] = False
            try:
                if conn is not None:
                    conn.close()
            except psycopg2.Error:
                pass
            conn = None
        time.sleep(1)


def snapshot():
    with _lock:
        return dict(_state)


@app.route("/api/results")
def api_results():
    s = snapshot()
    return jsonify({"a": s["a"], "b": s["b"], "total": s["a"] + s["b"],
                    "options": {"a": OPTION_A, "b": OPTION_B},
                    "connected": s["connected"]})


@app.route("/")
def index():
    s = snapshot()
    total = s["a"] + s["b"]
    pa = 50.0 if total == 0 else 100.0 * s["a"] / total
    body = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>{a} vs {b} -- Result</title></head>
<body>
<h1>{a} vs {b}</h1>
<div id="choice-a"><span class="label">{a}</span> <span class="stat" id="count-a">{ca}</span> votes ({pa:.1f}%)</div>
<div id="choice-b"><span class="label">{b}</span> <span class="stat" id="count-b">{cb}</span> votes ({pb:.1f}%)</div>
<p id="result">{total} vote{plural}</p>
</body>
</html>
""".format(a=html.escape(OPTION_A), b=html.escape(OPTION_B), ca=s["a"], cb=s["b"],
           pa=pa, pb=100.0 - pa, total=total, plural="" if total == 1 else "s")
    return body


threading.Thread(target=poll, name="poll", daemon=True).start()

if __name__ == "__main__":
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "80")), threaded=True)
