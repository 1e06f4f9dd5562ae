"""Structured logs: one line per event, `key=value` (kv) or JSON, with levels.

Messages written as `event=NAME key=value ...` stay as they are in kv and
become fields in JSON; any other message lands in a `msg` field.
"""

import json
import logging
import re
import sys
import time

_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\'[^\']*\'|\S+)')


def _fields(message):
    pairs = _PAIR.findall(message)
    if not pairs or not message.startswith(pairs[0][0] + "="):
        return {"msg": message}
    return {k: v[1:-1] if len(v) > 1 and v[0] == v[-1] and v[0] in "\"'" else v
            for k, v in pairs}


def _timestamp(record):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
        f".{int(record.msecs):03d}Z"


class KvFormatter(logging.Formatter):
    def format(self, record):
        message = record.getMessage()
        if not message.startswith("event="):
            message = f"msg={json.dumps(message)}"
        line = f"ts={_timestamp(record)} level={record.levelname.lower()} " \
               f"logger={record.name} {message}"
        if record.exc_info:
            line += f" exc={json.dumps(self.formatException(record.exc_info))}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record):
        out = {"ts": _timestamp(record), "level": record.levelname.lower(),
               "logger": record.name, **_fields(record.getMessage())}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(level="info", fmt="kv", stream=None):
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KvFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(str(level).upper())
