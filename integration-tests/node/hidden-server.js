// A hidden server as node-rendezvous's was written: TLS to the rendezvous server,
// `CONNECT uuid:<ID>?response=<TOTP>` (6-digit HMAC-SHA1 TOTP, not zero-padded, as the
// original sent it), then it answers the one request forwarded to it and exits.
// Usage: node hidden-server.js HOST PORT ID BASE32_SECRET STEP CA_FILE
'use strict';
const tls = require('tls');
const fs = require('fs');

const [host, port, id, secret, step, caFile] = process.argv.slice(2);

const { base32, totp } = require('./totp');

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
