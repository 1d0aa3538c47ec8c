"""function-js: run a Node-RED JavaScript function node's code, unchanged, in embedded V8.

Needs the optional extra: ``pip install 'meterflow[js]'`` (mini-racer).  ``meterflow import``
turns Node-RED ``function`` nodes into this type; Python functions are the ``function`` type.
::

    - id: create_basic_auth
      type: function-js
      code: |
        msg.payload = msg.username + ":" + msg.password;
        return msg;
      outputs: 1          # return [m0, m1] sends per output; null/undefined sends nothing
      timeout: 1s         # per call (and per timer callback); an endless loop is cut off
      initialize: ""      # run once at start (Node-RED "On Start")
      finalize: ""        # run once at stop (Node-RED "On Stop")

The code sees what a Node-RED function sees: ``msg``; ``node`` (``id``, ``name``,
``outputCount``, ``send(msgs, clone=true)``, ``done(err)``, ``error(err, msg)``, ``warn``,
``log``, ``debug``, ``trace``, ``status``, ``on("close")``); ``context`` / ``flow`` / ``global``
(``get``, ``set``, ``keys``, with property-path keys, arrays and callbacks) backed by
meterflow's context stores; ``env.get``; ``RED.util`` (``cloneMessage``,
``getMessageProperty``, ``setMessageProperty``, ``generateId``, ``ensureString``,
``ensureBuffer``, ...); ``Buffer``; ``console``; ``setTimeout`` / ``setInterval`` and their
``clear`` (on meterflow's clock, so tests run them on virtual time); ``Date`` (also on that
clock).  The body runs as an ``async function`` as in Node-RED, so ``await`` works.

How values cross over: the message and the context scopes the code mentions (``flow``,
``global``, ``context``) are copied in as JSON for each call (bytes become ``Buffer``) and
copied back afterwards; changes made in place to an object obtained with ``flow.get`` are
therefore kept, as Node-RED's by-reference context does.  A thrown error or a rejected
promise reaches catch nodes with the message (``error.message`` as JavaScript's
``String(err)``, e.g. ``"TypeError: x is not a function"``).  Unlike Node-RED the input
message does not also get a ``msg.error`` property (that quirk defeats the catch loop guard).
Not available: ``libs`` (npm modules), ``require``, ``process``.
"""

from __future__ import annotations

import atexit
import base64
import itertools
import json
import math
import os
import re
import threading
from typing import Any

from ..errors import ConfigError, FlowError, TimeoutError
from ..node import Node
from ..schema import Field, parse_duration

# ---------------------------------------------------------------------------------------------
# The JavaScript side: one prelude per V8 isolate, one entry per node (keyed by a counter).
# Every entry point (call, timer, initialize, finalize) records events in the node's list;
# Python drains them in a second eval, after V8 has run the microtasks (promise callbacks).
PRELUDE = r"""
var __mf = (function () {
  "use strict";
  const RealDate = Date;
  const AsyncFunction = (async function () {}).constructor;
  const mf = { now: 0, nodes: {} };

  // ---- bytes <-> text -------------------------------------------------------------------
  const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const B64I = {};
  for (let i = 0; i < 64; i++) B64I[B64[i]] = i;
  B64I["-"] = 62; B64I["_"] = 63;
  function b64enc(b) {
    let s = "", i = 0;
    for (; i + 2 < b.length; i += 3) {
      const n = (b[i] << 16) | (b[i + 1] << 8) | b[i + 2];
      s += B64[n >> 18] + B64[(n >> 12) & 63] + B64[(n >> 6) & 63] + B64[n & 63];
    }
    if (i < b.length) {
      const n = (b[i] << 16) | ((i + 1 < b.length ? b[i + 1] : 0) << 8);
      s += B64[n >> 18] + B64[(n >> 12) & 63] + (i + 1 < b.length ? B64[(n >> 6) & 63] : "=") + "=";
    }
    return s;
  }
  function b64dec(s) {
    const out = [];
    let acc = 0, bits = 0;
    for (const c of String(s)) {
      const v = B64I[c];
      if (v === undefined) { if (c === "=") break; else continue; }
      acc = (acc << 6) | v; bits += 6;
      if (bits >= 8) { bits -= 8; out.push((acc >> bits) & 255); }
    }
    return out;
  }
  function utf8enc(s) {
    const out = [];
    for (let i = 0; i < s.length; i++) {
      let c = s.charCodeAt(i);
      if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
        const d = s.charCodeAt(i + 1);
        if (d >= 0xdc00 && d < 0xe000) { c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00); i++; }
      }
      if (c < 0x80) out.push(c);
      else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
      else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    }
    return out;
  }
  function utf8dec(b) {
    let s = "";
    for (let i = 0; i < b.length;) {
      const c = b[i];
      let cp = 0xfffd, n = 1;
      if (c < 0x80) cp = c;
      else if (c >= 0xc2 && c < 0xe0 && i + 1 < b.length) { cp = ((c & 31) << 6) | (b[i + 1] & 63); n = 2; }
      else if (c >= 0xe0 && c < 0xf0 && i + 2 < b.length) { cp = ((c & 15) << 12) | ((b[i + 1] & 63) << 6) | (b[i + 2] & 63); n = 3; }
      else if (c >= 0xf0 && c < 0xf5 && i + 3 < b.length) {
        cp = ((c & 7) << 18) | ((b[i + 1] & 63) << 12) | ((b[i + 2] & 63) << 6) | (b[i + 3] & 63); n = 4;
      }
      s += String.fromCodePoint(cp);
      i += n;
    }
    return s;
  }

  // ---- a small Buffer (Node.js's is not in V8) ------------------------------------------
  class Buffer extends Uint8Array {
    static from(v, enc, len) {
      if (typeof v === "string") return Buffer._of(Buffer._encode(v, enc));
      if (v instanceof ArrayBuffer) return new Buffer(v, enc || 0, len);
      if (v instanceof Uint8Array || Array.isArray(v)) return Buffer._of(v);
      if (v && v.type === "Buffer" && Array.isArray(v.data)) return Buffer._of(v.data);
      throw new TypeError("The first argument must be of type string or an instance of Buffer, ArrayBuffer, or Array");
    }
    static _of(bytes) { const b = new Buffer(bytes.length); b.set(bytes); return b; }
    static _encode(s, enc) {
      enc = String(enc || "utf8").toLowerCase();
      if (enc === "base64" || enc === "base64url") return b64dec(s);
      if (enc === "hex") { const o = []; for (let i = 0; i + 1 < s.length; i += 2) o.push(parseInt(s.substr(i, 2), 16)); return o; }
      if (enc === "latin1" || enc === "binary" || enc === "ascii") return Array.from(s, (c) => c.charCodeAt(0) & 255);
      return utf8enc(s);
    }
    static alloc(n, fill) { const b = new Buffer(n); if (fill !== undefined) b.fill(typeof fill === "string" ? fill.charCodeAt(0) : fill); return b; }
    static allocUnsafe(n) { return new Buffer(n); }
    static isBuffer(b) { return b instanceof Buffer; }
    static byteLength(s, enc) { return typeof s === "string" ? Buffer._encode(s, enc).length : s.length; }
    static concat(list, total) {
      const n = total === undefined ? list.reduce((a, b) => a + b.length, 0) : total;
      const out = new Buffer(n);
      let pos = 0;
      for (const b of list) { if (pos >= n) break; out.set(b.subarray(0, n - pos), pos); pos += b.length; }
      return out;
    }
    toString(enc, start, end) {
      const b = this.subarray(start || 0, end === undefined ? this.length : end);
      enc = String(enc || "utf8").toLowerCase();
      if (enc === "base64") return b64enc(b);
      if (enc === "hex") return Array.from(b, (x) => (x < 16 ? "0" : "") + x.toString(16)).join("");
      if (enc === "latin1" || enc === "binary" || enc === "ascii") return Array.from(b, (x) => String.fromCharCode(x)).join("");
      return utf8dec(b);
    }
    toJSON() { return { type: "Buffer", data: Array.from(this) }; }
    equals(o) { return o.length === this.length && this.every((x, i) => x === o[i]); }
    slice(s, e) { return this.subarray(s, e); }
  }

  // ---- crossing over: JSON with tagged bytes ------------------------------------------------
  function reviver(k, v) {
    if (v && typeof v === "object" && typeof v.__mf_buf === "string" && Object.keys(v).length === 1) return Buffer.from(v.__mf_buf, "base64");
    return v;
  }
  function replacer(k, v) {
    const raw = this[k];
    if (raw instanceof Uint8Array) return { __mf_buf: b64enc(raw) };
    return v;
  }
  mf.parse = (t) => JSON.parse(t, reviver);
  mf.stringify = (v) => JSON.stringify(v === undefined ? null : v, replacer);
  const snapshot = (v) => (v === undefined || v === null || typeof v !== "object" ? v : mf.parse(mf.stringify(v)));

  // ---- property paths (RED.util.normalisePropertyExpression, simplified) ---------------------
  function parts(expr) {
    if (typeof expr !== "string" || expr === "") throw new Error("Invalid property expression: " + expr);
    const out = [];
    const re = /([^.[\]]+)|\[(\d+)\]|\[(['"])(.*?)\3\]/g;
    let m, last = 0;
    while ((m = re.exec(expr)) !== null) {
      const gap = expr.slice(last, m.index);
      if (gap !== "" && gap !== ".") throw new Error("Invalid property expression: " + expr);
      out.push(m[1] !== undefined ? m[1] : m[2] !== undefined ? Number(m[2]) : m[4]);
      last = re.lastIndex;
    }
    if (last !== expr.length || out.length === 0) throw new Error("Invalid property expression: " + expr);
    return out;
  }
  function getProp(obj, expr) {
    let o = obj;
    for (const p of parts(expr)) {
      if (o === undefined || o === null) return undefined;
      o = o[p];
    }
    return o;
  }
  function setProp(obj, expr, value, create) {
    const ps = parts(expr);
    let o = obj;
    for (let i = 0; i < ps.length - 1; i++) {
      let next = o[ps[i]];
      if (next === undefined || next === null) {
        if (value === undefined || create === false) return;
        next = o[ps[i]] = typeof ps[i + 1] === "number" ? [] : {};
      } else if (typeof next !== "object") {
        throw new Error("Cannot set property of non-object type: " + expr);
      }
      o = next;
    }
    const leaf = ps[ps.length - 1];
    if (value === undefined) {
      if (Array.isArray(o) && typeof leaf === "number") o.splice(leaf, 1);
      else delete o[leaf];
    } else o[leaf] = value;
  }
  function msgExpr(e) { return typeof e === "string" && e.startsWith("msg.") ? e.slice(4) : e; }

  function cloneDeep(v) {
    if (v === null || typeof v !== "object") return v;
    if (v instanceof Uint8Array) return Buffer.from(v);
    if (v instanceof RealDate) return new RealDate(v.getTime());
    if (Array.isArray(v)) return v.map(cloneDeep);
    const out = {};
    for (const k of Object.keys(v)) out[k] = (k === "req" || k === "res") ? v[k] : cloneDeep(v[k]);
    return out;
  }
  function errText(e) {
    if (e instanceof Error) {
      let s = String(e);
      if (e instanceof ReferenceError && e.stack) {
        const m = /, <anonymous>:(\d+):(\d+)\)/.exec(e.stack);
        // Node-RED's text, doubled name included: "ReferenceError: ReferenceError: x is not defined (line 3, col 21)"
        if (m) s = e.name + ": " + s + " (line " + (Number(m[1]) - 2) + ", col " + m[2] + ")";
      }
      return s;
    }
    if (e && typeof e === "object") { try { return JSON.stringify(e); } catch (x) { return String(e); } }
    return String(e);
  }
  const ensureString = (o) => o instanceof Uint8Array ? Buffer.from(o).toString() : (o && typeof o === "object") ? JSON.stringify(o) : String(o);
  const RED = {
    util: {
      cloneMessage: cloneDeep,
      getMessageProperty: (msg, expr) => getProp(msg, msgExpr(expr)),
      setMessageProperty: (msg, expr, value, create) => setProp(msg, msgExpr(expr), value, create),
      getObjectProperty: getProp,
      setObjectProperty: setProp,
      normalisePropertyExpression: parts,
      generateId: () => { let s = ""; for (let i = 0; i < 16; i++) s += Math.floor(Math.random() * 16).toString(16); return s; },
      ensureString: ensureString,
      ensureBuffer: (o) => o instanceof Uint8Array ? o : Buffer.from(typeof o === "object" && o !== null ? JSON.stringify(o) : String(o)),
      compareObjects: (a, b) => mf.stringify(a) === mf.stringify(b),
      encodeObject: (m) => m,
      parseContextStore: (key) => {
        const m = /^#:\((\S+?)\)::(.*)$/.exec(key);
        return m ? { store: m[1], key: m[2] } : { key: key };
      },
      evaluateNodeProperty: (value, type, node, msg, cb) => {
        let r;
        try {
          if (type === "str") r = "" + value;
          else if (type === "num") r = Number(value);
          else if (type === "bool") r = /^true$/i.test(value);
          else if (type === "json") r = JSON.parse(value);
          else if (type === "bin") r = Buffer.from(JSON.parse(value));
          else if (type === "date") r = mf.now;
          else if (type === "msg" && msg) r = getProp(msg, msgExpr(value));
          else if (type === "env") r = mf.env[value] === undefined ? "" : mf.env[value];
          else if (type === "flow" || type === "global") r = node && node.__scopes ? getProp(node.__scopes[type].data, value) : undefined;
          else r = value;
        } catch (e) { if (cb) { cb(e); return; } throw e; }
        if (cb) cb(null, r); else return r;
      },
    },
  };
  mf.env = {};

  // ---- context: the scopes Python shipped for this entry ---------------------------------------
  function stripStore(key) {
    if (typeof key !== "string" || key === "") throw new Error("Invalid context key");
    const m = /^#:\((\S+?)\)::(.*)$/.exec(key);
    return m ? m[2] : key;
  }
  function contextApi(holder, name) {
    const api = {
      get(key, store, cb) {
        if (typeof store === "function") { cb = store; store = undefined; }
        const data = holder[name].data;
        let value;
        try {
          value = Array.isArray(key) ? key.map((k) => getProp(data, stripStore(k))) : getProp(data, stripStore(key));
        } catch (e) { if (cb) { cb(e); return; } throw e; }
        if (cb) { if (Array.isArray(key)) cb(null, ...value); else cb(null, value); return; }
        return value;
      },
      set(key, value, store, cb) {
        if (typeof store === "function") { cb = store; store = undefined; }
        const data = holder[name].data;
        try {
          if (Array.isArray(key)) key.forEach((k, i) => setProp(data, stripStore(k), Array.isArray(value) && value[i] !== undefined ? value[i] : null));
          else setProp(data, stripStore(key), value);
        } catch (e) { if (cb) { cb(e); return; } throw e; }
        if (cb) cb(null);
      },
      keys(store, cb) {
        if (typeof store === "function") cb = store;
        const ks = Object.keys(holder[name].data);
        if (cb) { cb(null, ks); return; }
        return ks;
      },
    };
    return api;
  }

  function MFDate(...a) {
    if (!new.target) return new RealDate(mf.now).toString();
    return a.length ? new RealDate(...a) : new RealDate(mf.now);
  }
  MFDate.prototype = RealDate.prototype;
  MFDate.now = () => mf.now;
  MFDate.parse = RealDate.parse;
  MFDate.UTC = RealDate.UTC;

  const PARAMS = ["msg", "node", "context", "flow", "global", "env", "RED", "Buffer", "Date", "console", "util",
                  "setTimeout", "clearTimeout", "setInterval", "clearInterval"];

  // ---- nodes ------------------------------------------------------------------------------
  mf.define = function (key, info, code, init, fin) {
    const n = { info: info, ev: [], scopes: { node: { data: {} }, flow: { data: {} }, global: { data: {} } },
                shipped: {}, timers: {}, seq: 0, close: [] };
    // Code without await runs as a plain function: its result is there when the call returns,
    // so one round trip to V8 suffices.  With await it is async, as Node-RED always makes it.
    n.fn = new (/\bawait\b/.test(code) ? AsyncFunction : Function)(...PARAMS, code);
    n.unsettled = 0;
    n.init = init ? new AsyncFunction(...PARAMS, init) : null;
    n.fin = fin ? new AsyncFunction(...PARAMS, fin) : null;
    n.context = contextApi(n.scopes, "node");
    n.context.flow = contextApi(n.scopes, "flow");
    n.context.global = contextApi(n.scopes, "global");
    n.flow = contextApi(n.scopes, "flow");
    n.global = contextApi(n.scopes, "global");
    n.env = { get: (name) => (name === "NR_NODE_ID" ? info.id : name === "NR_NODE_NAME" ? info.name
                            : name === "NR_FLOW_NAME" ? info.flow : mf.env[name]) };
    const log = (level) => (...a) => n.ev.push({ t: "log", level: level, text: a.map((x) => typeof x === "string" ? x : ensureString(x)).join(" ") });
    n.console = { log: log("info"), info: log("info"), warn: log("warn"), error: log("error"), debug: log("debug") };
    n.util = { format: (...a) => a.map((x) => typeof x === "string" ? x : ensureString(x)).join(" "), inspect: (x) => ensureString(x) };
    n.timer = (repeat) => (fn, ms, ...args) => {
      const id = ++n.seq;
      n.timers[id] = { fn: fn, args: args, repeat: repeat };
      n.ev.push({ t: "timer", id: id, ms: Math.max(0, Number(ms) || 0), repeat: repeat });
      return id;
    };
    n.clear = (id) => { if (n.timers[id]) { delete n.timers[id]; n.ev.push({ t: "clear", id: id }); } };
    mf.nodes[key] = n;
  };

  function nodeApi(n, call, msgid) {
    const api = {
      id: n.info.id, name: n.info.name, path: n.info.id, outputCount: n.info.outputs,
      log: (t) => n.ev.push({ t: "log", level: "info", text: ensureString(t) }),
      warn: (t) => n.ev.push({ t: "log", level: "warn", text: ensureString(t) }),
      debug: (t) => n.ev.push({ t: "log", level: "debug", text: ensureString(t) }),
      trace: (t) => n.ev.push({ t: "log", level: "debug", text: ensureString(t) }),
      error: (e, m) => n.ev.push(m ? { t: "error", call: call, text: errText(e), msg: snapshot(m) } : { t: "error", text: errText(e) }),
      status: (s) => n.ev.push({ t: "status", s: (s && typeof s === "object") ? s : { text: s === undefined ? "" : String(s) } }),
      send: (msgs, clone) => n.ev.push({ t: "send", msgid: msgid, msgs: clone === false ? msgs : snapshot(msgs) }),
      done: (err) => n.ev.push({ t: "done", call: call, error: err === undefined || err === null ? null : errText(err) }),
      on: (event, fn) => { if (event === "close") n.close.push(fn); },
      metric: () => false,
    };
    return api;
  }

  function load(n, ctxText, now) {
    mf.now = now;
    if (ctxText) {
      const c = mf.parse(ctxText) || {};
      n.shipped = {};
      for (const k of ["node", "flow", "global"]) {
        if (c[k] !== undefined && c[k] !== null) { n.scopes[k].data = c[k]; n.shipped[k] = true; }
      }
    }
  }
  function run(n, fn, msg, api) {
    return fn(msg, api, n.context, n.flow, n.global, n.env, RED, Buffer, MFDate, n.console, n.util,
              n.timer(false), n.clear, n.timer(true), n.clear);
  }

  mf.call = function (key, call, msgText, ctxText, now) {
    const n = mf.nodes[key];
    load(n, ctxText, now);
    const msg = mf.parse(msgText);
    const api = nodeApi(n, call, msg._msgid);
    const ok = (v) => n.ev.push({ t: "result", call: call, value: v === undefined ? null : v });
    const fail = (e) => n.ev.push({ t: "fail", call: call, error: errText(e), msg: msg });
    let r;
    try { r = run(n, n.fn, msg, api); } catch (e) { fail(e); return mf.drain(key); }
    if (r && typeof r.then === "function") settle(n, r, ok, fail); else ok(r);
    return mf.drain(key);
  };
  function settle(n, p, ok, fail) {
    n.unsettled++;
    Promise.resolve(p).then((v) => { n.unsettled--; ok(v); }, (e) => { n.unsettled--; fail(e); });
  }
  mf.lifecycle = function (key, which, ctxText, now) {
    const n = mf.nodes[key];
    load(n, ctxText, now);
    const api = nodeApi(n, which, undefined);
    const fns = which === "init" ? [n.init] : [n.fin].concat(n.close);
    for (const fn of fns) {
      if (!fn) continue;
      let p;
      try { p = fn === n.init || fn === n.fin ? run(n, fn, undefined, api) : fn(); } catch (e) { p = Promise.reject(e); }
      settle(n, p, () => n.ev.push({ t: which }), (e) => n.ev.push({ t: "error", text: errText(e) }));
    }
    if (which === "init" && !n.init) n.ev.push({ t: "init" });
    return mf.drain(key);
  };
  mf.fire = function (key, id, ctxText, now) {
    const n = mf.nodes[key];
    const t = n.timers[id];
    if (!t) return mf.drain(key);
    load(n, ctxText, now);
    if (!t.repeat) delete n.timers[id];
    const fail = (e) => n.ev.push({ t: "error", text: errText(e), msg: {} });
    try {
      const r = t.fn(...t.args);
      if (r && typeof r.then === "function") settle(n, r, () => {}, fail);
    } catch (e) { fail(e); }
    return mf.drain(key);
  };
  mf.drain = function (key) {
    const n = mf.nodes[key];
    if (!n) return "null";
    const ctx = {};
    for (const k of Object.keys(n.shipped)) ctx[k] = n.scopes[k].data;
    const out = mf.stringify({ ev: n.ev, ctx: ctx, pending: n.unsettled });
    n.ev = [];
    return out;
  };
  mf.drop = function (key) { delete mf.nodes[key]; };
  mf.syntax = function (code) {
    try { new AsyncFunction(...PARAMS, code); return null; } catch (e) { return String(e); }
  };
  return mf;
})();
"""

_lock = threading.Lock()
_racer: Any = None
_keys = itertools.count(1)


def _mini_racer():
    """The process's one V8 isolate, with the prelude loaded (created on first use)."""
    global _racer
    with _lock:
        if _racer is None:
            try:
                from py_mini_racer import MiniRacer
            except ImportError:
                raise ConfigError("function-js needs mini-racer: pip install 'meterflow[js]'") from None
            # Made on a thread with no running asyncio loop, so mini-racer runs its own loop
            # thread: the isolate then outlives any one engine loop, and eval() can time out.
            box: list = []
            maker = threading.Thread(target=lambda: box.append(MiniRacer()), daemon=True)
            maker.start()
            maker.join()
            racer = box[0]
            racer.eval(PRELUDE)
            _racer = racer
            atexit.register(_close)  # before interpreter shutdown freezes mini-racer's loop thread
        return _racer


def _close() -> None:
    global _racer
    with _lock:
        racer, _racer = _racer, None
    if racer is not None:
        racer.close()


def js_error_text(exc: BaseException) -> str:
    """The ``TypeError: ...`` line of a mini-racer exception, without V8's file:line prefix."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    first = re.sub(r"^\S*?:\d+: ", "", lines[0]) if lines else type(exc).__name__
    return first


def syntax_error(code: str) -> str | None:
    """JavaScript's complaint about ``code`` as a function body, with its line, or None."""
    racer = _mini_racer()
    err = racer.eval(f"__mf.syntax({json.dumps(code)})")
    if not err:
        return None
    # The constructor's message has no position; compiling the same body as a script gives one.
    line = ""
    try:
        racer.eval("(async function (msg) {\n" + code + "\n});", timeout_sec=1)
    except Exception as e:
        m = re.match(r"\S*?:(\d+):", str(e))
        if m:
            line = f" (line {int(m.group(1)) - 1})"
    return f"{err}{line}"


# ---- Python <-> JSON, bytes tagged ------------------------------------------------------------------
def _default(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return {"__mf_buf": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, set | tuple | frozenset):
        return list(v)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def to_json(v: Any) -> str:
    try:
        return json.dumps(v, default=_default, allow_nan=False)
    except ValueError:  # NaN / Infinity: JSON has none; JavaScript's JSON.stringify writes null too
        return json.dumps(_finite(v), default=_default, allow_nan=False)


def _hook(d: dict) -> Any:
    if len(d) == 1 and "__mf_buf" in d and isinstance(d["__mf_buf"], str):
        return base64.b64decode(d["__mf_buf"])
    return d


def from_json(text: str) -> Any:
    return json.loads(text, object_hook=_hook)


MAX_PENDING = 10000  # messages kept for a node.done() that code may never call
_USES = {scope: re.compile(rf"\b{scope}\b") for scope in ("context", "flow", "global")}
_EXPLICIT_DONE = re.compile(r"\bnode\s*\.\s*done\s*\(")


class FunctionJs(Node):
    type = "function-js"
    summary = "Run a Node-RED JavaScript function's code unchanged (needs meterflow[js])"
    auto_done = False
    schema = {
        "code": Field("str", "the function body, as in Node-RED (msg in; return msg, null or one entry per output)",
                      required=True),
        "outputs": Field("int", "number of outputs", default=1, minimum=0),
        "timeout": Field("duration", "time limit of each call, timer callback, initialize and finalize", default=1.0),
        "initialize": Field("str", "code run once at start (Node-RED's On Start)"),
        "finalize": Field("str", "code run once at stop (Node-RED's On Stop)"),
    }

    @classmethod
    def output_names(cls, config: dict) -> list[str]:
        n = config.get("outputs", 1)
        return [str(i) for i in range(n if isinstance(n, int) and n >= 0 else 1)]

    @classmethod
    def check(cls, config: dict) -> list:
        problems = []
        if parse_duration(config["timeout"]) <= 0:
            problems.append((("timeout",), "a function needs a time limit above 0 (it runs on the engine's thread)"))
        try:
            for field in ("code", "initialize", "finalize"):
                if config.get(field):
                    err = syntax_error(config[field])
                    if err:
                        problems.append(((field,), f"JavaScript {err}"))
        except ConfigError as e:
            problems.append(((), str(e)))
        return problems

    def setup(self) -> None:
        cfg = self.config
        self._code = cfg["code"]
        self._timeout = parse_duration(cfg["timeout"])
        text = " ".join(cfg.get(f) or "" for f in ("code", "initialize", "finalize"))
        uses = {scope for scope, rx in _USES.items() if rx.search(text)}
        if "context" in uses:
            uses |= {"flow", "global"}
        self._uses = uses
        self._explicit_done = bool(_EXPLICIT_DONE.search(text))
        self._calls = itertools.count(1)
        self._pending: dict[int, dict] = {}
        self._timers: dict[int, Any] = {}
        self._ready = not cfg.get("initialize")
        self._waiting: list[dict] = []
        self._racer = _mini_racer()
        self._key = f"n{next(_keys)}"
        info = {"id": self.id, "name": self.name, "outputs": len(self.output_names(cfg)), "flow": self.flow.name}
        env = {k: v for k, v in os.environ.items()}
        self._eval(f"__mf.env = {json.dumps(env)}; __mf.define({json.dumps(self._key)}, {json.dumps(info)},"
                   f" {json.dumps(self._code)}, {json.dumps(cfg.get('initialize') or '')},"
                   f" {json.dumps(cfg.get('finalize') or '')})")

    async def start(self) -> None:
        if self.config.get("initialize"):
            self._enter("lifecycle", ['"init"'], None)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._enter("lifecycle", ['"fin"'], None)
        self._eval(f"__mf.drop({json.dumps(self._key)})")

    # ---- calling into V8 -------------------------------------------------------------------------
    def _eval(self, code: str):
        return self._racer.eval(code, timeout_sec=self._timeout)

    def _ctx_json(self) -> str:
        scopes = {}
        if "context" in self._uses:
            scopes["node"] = self.context.data
        if "flow" in self._uses:
            scopes["flow"] = self.flow_context.data
        if "global" in self._uses:
            scopes["global"] = self.global_context.data
        return to_json(scopes) if scopes else "null"

    def _enter(self, entry: str, args: list[str], msg: dict | None) -> bool:
        """Run ``__mf.<entry>(key, *args, context, now)``, then apply what it did.

        False when the code did not run to its end (time limit, or an engine error)."""
        from py_mini_racer import JSEvalException, JSTimeoutException

        call = ", ".join([json.dumps(self._key), *args, json.dumps(self._ctx_json()), repr(self.clock.time() * 1000)])
        try:
            out = from_json(self._eval(f"__mf.{entry}({call})")) or {}
        except JSTimeoutException:
            self._report(TimeoutError(f"function timed out after {self._timeout:g}s"), msg)
            self._apply(self._drain())  # what it did before the limit still counts
            return False
        except JSEvalException as e:
            self._report(FlowError(js_error_text(e)), msg)
            return False
        self._apply(out)
        if out.get("pending"):
            # Promises may have settled in the microtasks V8 ran after the call: collect them.
            self._apply(self._drain())
        return True

    def _drain(self) -> dict:
        text = self._racer.eval(f"__mf.drain({json.dumps(self._key)})")
        return from_json(text) or {"ev": [], "ctx": {}}

    def _report(self, err: BaseException, msg: dict | None) -> None:
        self.error(err, msg)

    def on_input(self, msg: dict):
        if not self._ready:
            self._waiting.append(msg)  # Node-RED queues messages until On Start has finished
            return None
        call = next(self._calls)
        self._pending[call] = msg
        if not self._enter("call", [str(call), json.dumps(to_json(msg))], msg):
            self._pending.pop(call, None)
        return None

    def _fire(self, timer_id: int, repeat: bool, delay: float) -> None:
        if repeat:
            self._timers[timer_id] = self.clock.call_later(delay, lambda: self._fire(timer_id, True, delay))
        else:
            self._timers.pop(timer_id, None)
        self._enter("fire", [str(timer_id)], None)

    # ---- applying what the code did ---------------------------------------------------------------
    def _apply(self, out: dict) -> None:
        ctx = out.get("ctx") or {}
        for scope, target in (("node", self.context if "context" in self._uses else None),
                              ("flow", self.flow_context), ("global", self.global_context)):
            if scope in ctx and target is not None and isinstance(ctx[scope], dict):
                self._write_back(target, ctx[scope])
        for ev in out.get("ev") or []:
            self._event(ev)

    @staticmethod
    def _write_back(target, new: dict) -> None:
        data = target.data
        changed = False
        for key in [k for k in data if k not in new]:
            del data[key]
            changed = True
        for key, value in new.items():
            if key not in data or from_json(to_json(data[key])) != value:
                data[key] = value
                changed = True
        if changed:
            target.mark_changed()

    def _event(self, ev: dict) -> None:
        t = ev.get("t")
        if t == "result":
            call = ev["call"]
            msg = self._pending.get(call) if self._explicit_done else self._pending.pop(call, None)
            if msg is not None:
                self._send_from(ev.get("value"), msg.get("_msgid"))
                if not self._explicit_done:
                    self.done(msg)
                elif len(self._pending) > MAX_PENDING:  # node.done() is never called on some path
                    self._pending.pop(next(iter(self._pending)))
        elif t == "fail":
            msg = self._pending.pop(ev["call"], None)
            if msg is not None:
                failed = ev.get("msg") if isinstance(ev.get("msg"), dict) else msg
                self._report(FlowError(ev.get("error") or "error"), failed)
        elif t == "send":
            self._send_from(ev.get("msgs"), ev.get("msgid"))
        elif t == "done":
            msg = self._pending.pop(ev.get("call"), None) if isinstance(ev.get("call"), int) else None
            if msg is not None:
                if ev.get("error"):
                    self._report(FlowError(ev["error"]), msg)
                else:
                    self.done(msg)
        elif t == "error":
            text = ev.get("text") or "error"
            if isinstance(ev.get("msg"), dict):
                self._report(FlowError(text), ev["msg"])
            else:
                self._report(FlowError(text), None)
        elif t == "log":
            level = ev.get("level")
            text = self.flow.engine.redact(ev.get("text", ""))
            if level == "warn":
                self.warn(text)
            elif level == "error":
                self.log.error("[%s] %s", self.id, text)
            elif level == "debug":
                self.log.debug("[%s] %s", self.id, text)
            else:
                self.log.info("[%s] %s", self.id, text)
        elif t == "status":
            s = ev.get("s") or {}
            self.status(s.get("fill"), s.get("shape"), s.get("text", ""))
        elif t == "timer":
            delay = float(ev.get("ms") or 0) / 1000
            tid, repeat = int(ev["id"]), bool(ev.get("repeat"))
            self._timers[tid] = self.clock.call_later(delay, lambda: self._fire(tid, repeat, delay))
        elif t == "clear":
            timer = self._timers.pop(int(ev["id"]), None)
            if timer is not None:
                timer.cancel()
        elif t == "init":
            self._ready = True
            waiting, self._waiting = self._waiting, []
            for msg in waiting:
                self.on_input(msg)

    def _send_from(self, value: Any, msgid: str | None) -> None:
        """Send a returned value / node.send argument, every message with the input's _msgid."""
        if value is None:
            return
        outputs = value if isinstance(value, list) else [value]
        for out in outputs:
            for m in out if isinstance(out, list) else [out]:
                if isinstance(m, dict) and msgid:
                    m["_msgid"] = msgid
        self.send(value)


NODE_TYPES = [FunctionJs]
