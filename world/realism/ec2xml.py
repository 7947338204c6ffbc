"""EC2's XML answers: finding elements by path with their byte spans,
editing those spans, and EC2's error answer."""

import re
import uuid
import xml.parsers.expat
from xml.sax.saxutils import escape


class Element:
    """An element of interest in a response: its byte span and the text and
    spans of its direct children."""

    def __init__(self, path, start):
        self.path = path
        self.start = start
        self.end = start
        self.text = {}
        self.spans = {}

    def contains(self, other):
        return self.start <= other.start and other.end <= self.end


def scan(body, paths):
    """Elements of body whose path below the root is in paths ("" is the root).

    Raises xml.parsers.expat.ExpatError when body is not XML."""
    parser = xml.parsers.expat.ParserCreate()
    parser.buffer_text = True
    stack = []  # [tag, path, Element or None, text parts or None, start]
    found = []

    def start(tag, _attrs):
        idx = parser.CurrentByteIndex
        if stack:
            parent_path = stack[-1][1]
            path = parent_path + "/" + tag if parent_path else tag
        else:
            path = ""
        elem = Element(path, idx) if path in paths else None
        collect = [] if stack and stack[-1][2] is not None else None
        stack.append([tag, path, elem, collect, idx])

    def end(_tag):
        idx = parser.CurrentByteIndex
        tag, _path, elem, text, begin = stack.pop()
        first = body.index(b">", begin)
        if body[first - 1:first] == b"/":  # <tag/>
            stop = first + 1
        else:
            stop = body.index(b">", idx) + 1
        if elem is not None:
            elem.end = stop
            found.append(elem)
        if text is not None:
            parent = stack[-1][2]
            parent.text[tag] = "".join(text)
            parent.spans[tag] = (begin, stop)

    def chars(data):
        if stack and stack[-1][3] is not None:
            stack[-1][3].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.Parse(body, True)
    return found


def apply_edits(body, edits):
    """Replace (start, end, bytes) spans of body; overlapping edits inside an
    earlier-starting wider one are dropped."""
    edits = sorted(edits, key=lambda e: (e[0], -e[1]))
    kept = []
    for e in edits:
        if kept and e[0] < kept[-1][1]:
            continue
        kept.append(e)
    out = body
    for s, t, rep in reversed(kept):
        out = out[:s] + rep + out[t:]
    return out


def error_body(code, message):
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>"
            "<Code>%s</Code><Message>%s</Message></Error></Errors>"
            "<RequestID>%s</RequestID></Response>"
            % (escape(code), escape(message), uuid.uuid4())).encode()


def new_request_id(body):
    return re.sub(rb"<requestId>[^<]*</requestId>",
                  ("<requestId>%s</requestId>" % uuid.uuid4()).encode(), body, count=1)
