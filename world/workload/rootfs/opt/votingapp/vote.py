"""Reference "vote" service of the voting app.

HTTP on port 80. GET / shows the two options (env OPTION_A, OPTION_B);
POST / with form field vote=a|b pushes {"voter_id": ..., "vote": ...} as JSON
onto the redis list "votes" (host "redis"). The voter id lives in the cookie
"voter_id" and is set when absent.
"""

import html
import json
import os
import secrets
import socket

import redis
from flask import Flask, make_response, request

OPTION_A = os.environ.get("OPTION_A", "Cats")
OPTION_B = os.environ.get("OPTION_B", "Dogs")
REDIS_HOST = "redis"
HOSTNAME = socket.gethostname()

app = Flask(__name__)
_redis = None


def get_redis():
    global _redis
    if _redis is None:
        _redis = redis.Redis(
            host=REDIS_HOST, port=6379, db=0,
            socket_connect_timeout=5, socket_timeout=5,
        )
    return _redis


PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{a} vs {b}!</title></head>
<body>
<h1>{a} vs {b}!</h1>
<form method="POST" action="/">
  <button id="a" type="submit" name="vote" value="a">{a}</button>
  <button id="b" type="submit" name="vote" value="b">{b}</button>
</form>
<p class="tip">(Tip: you can change your vote)</p>
{voted}
<p class="hostname">Processed by container ID {host}</p>
</body>
</html>
"""


def render(vote):
    voted = ""
    if vote in ("a", "b"):
        voted = '<p class="voted">You voted for <b>{}</b></p>'.format(
            html.escape(OPTION_A if vote == "a" else OPTION_B))
    return PAGE.format(a=html.escape(OPTION_A), b=html.escape(OPTION_B),
                       voted=voted, host=html.escape(HOSTNAME))


@app.route("/", methods=["GET", "POST"])
def index():
    voter_id = request.cookies.get("voter_id") or secrets.token_hex(8)
    vote = None
    if request.method == "POST":
        vote = request.form.get("vote")
        if vote not in ("a", "b"):
            return make_response("vote must be a or b\n", 400)
        data = json.dumps({"voter_id": voter_id, "vote": vote})
        try:
            get_redis().rpush("votes", data)
        except redis.RedisError as exc:
            app.logger.error("cannot reach redis: %s", exc)
            return make_response("cannot record the vote: redis unreachable\n", 503)
        app.logger.info("vote %s from %s", vote, voter_id)
    resp = make_response(render(vote))
    resp.set_cookie("voter_id", voter_id)
    return resp


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "80")), threaded=True)
