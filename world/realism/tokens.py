"""ClientToken idempotency: the same token with the same parameters gets
the first answer again without reaching moto; other parameters get
IdempotentParameterMismatch."""

import threading

from .ec2xml import new_request_id

# request fields that do not make a request different for ClientToken purposes
VOLATILE_PARAMS = {
    "ClientToken", "Version", "Signature", "SignatureMethod", "SignatureVersion",
    "Timestamp", "Expires", "AWSAccessKeyId", "SecurityToken",
}


class TokenEntry:
    """What a ClientToken was first used for, and the answer it got."""

    def __init__(self, fingerprint):
        self.fingerprint = fingerprint
        self.lock = threading.Lock()
        self.response = None  # (status, headers, body)


def fingerprint(params):
    return tuple(sorted((k, v) for k, v in params
                        if k not in VOLATILE_PARAMS and not k.startswith("X-Amz-")))


class ClientTokens:
    """A part of ``proxy.Handler``: forwards requests that carry a
    ClientToken."""

    def idempotent(self, action, params, body, scope, token):
        """Forward a request carrying a ClientToken at most once per token and
        parameters; (status, headers, body, replayed), status None when the
        parameters differ from the first use (the error is sent)."""
        realism = self.realism
        key = scope + (token,)
        fp = fingerprint(params)
        entry = realism.token_entry(key, fp)
        if entry.fingerprint != fp:
            realism.count("mismatches", action)
            first, now = dict(entry.fingerprint), dict(fp)
            differ = sorted(k for k in set(first) | set(now) if first.get(k) != now.get(k))
            self.send_error_xml(400, "IdempotentParameterMismatch",
                                "ClientToken '%s' was first used with other parameters; "
                                "these differ: %s. Use a new token for a different request."
                                % (token, ", ".join(differ[:10])))
            return None, None, None, False
        with entry.lock:
            if entry.response is not None:
                realism.count("replays", action)
                status, headers, data = entry.response
                return status, headers, new_request_id(data), True
            try:
                status, headers, data = self.forward(body)
            except OSError:
                realism.drop_token(key, entry)
                raise
            if status == 200:
                entry.response = (status, headers, data)
            else:  # a failed request does not use up its token
                realism.drop_token(key, entry)
            return status, headers, data, False
