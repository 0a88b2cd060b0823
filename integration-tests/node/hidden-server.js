// A hidden server as node-rendezvous's was written: TLS to the rendezvous server,
// `CONNECT uuid:<ID>?response=<TOTP>` (6-digit HMAC-SHA1 TOTP, not zero-padded, as the
// original sent it), then it answers the one request forwarded to it and exits.
// Usage: node hidden-server.js HOST PORT ID BASE32_SECRET STEP CA_FILE
'use strict';
const tls = require('tls');
const fs = require('fs');
const crypto = require('crypto');

const [host, port, id, secret, step, caFile] = process.argv.slice(2);

function base32(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0, value = 0;
  const out = [];
  for (const c of s.replace(/=+$/, '').toUpperCase()) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

function totp(key, stepSeconds) {
  const counter = Math.floor(Date.now() / 1000 / stepSeconds);
  const msg = Buffer.alloc(8);
  msg.writeUInt32BE(Math.floor(counter / 0x100000000), 0);
  msg.writeUInt32BE(counter % 0x100000000, 4);
  const mac = crypto.createHmac('sha1', key).update(msg).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const bin = ((mac[offset] & 0x7f) << 24) | (mac[offset + 1] << 16) |
    (mac[offset + 2] << 8) | mac[offset + 3];
  return String(bin % 1000000);
}

const code = totp(base32(secret), Number(step));
const sock = tls.connect({ host, port: Number(port), servername: 'localhost', ca: fs.readFileSync(caFile) }, () => {
  sock.write(`CONNECT uuid:${id}?response=${code} HTTP/1.1\r\n\r\n`);
});
let buf = Buffer.alloc(0);
let state = 'answer';
sock.on('data', (d) => {
  buf = Buffer.concat([buf, d]);
  if (state === 'answer') {
    const i = buf.indexOf('\r\n\r\n');
    if (i < 0) return;
    const head = buf.subarray(0, i).toString();
    if (head !== 'HTTP/1.1 200') {
      console.log('refused ' + buf.toString());
      process.exit(2);
    }
    console.log('parked');
    buf = buf.subarray(i + 4);
    state = 'request';
  }
  if (state === 'request') {
    const i = buf.indexOf('\r\n\r\n');
    if (i < 0) return;
    const head = buf.subarray(0, i).toString();
    const line = head.split('\r\n')[0];
    const auth = /\r\nauthorization:/i.test(head) ? 'yes' : 'no';
    const body = `node saw ${line} authorization=${auth}\n`;
    sock.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    state = 'done';
  }
});
sock.on('close', () => process.exit(state === 'done' ? 0 : 3));
sock.on('error', (e) => { console.log('error ' + e.message); process.exit(1); });
