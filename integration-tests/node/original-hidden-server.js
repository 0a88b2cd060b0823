// A hidden server that behaves as node-rendezvous's original one (e.g. steward's server
// loop): it keeps WANTED connections parked, each opened with Node's own https CONNECT
// client (`https.request({ method: 'CONNECT' })`) and the code of the current TOTP step.
// As the original, it acts only on `data` events of the socket it gets in the `connect`
// event and ignores the `head` bytes that arrived with the answer; after each visitor it
// parks again at once with the current code; a refusal is retried after 15 s.
// It answers each request with `node served <n> <request line>` and prints one line per
// event: `parked`, `served <n>`, `refused <status> <body>`.
// Usage: node original-hidden-server.js HOST PORT ID BASE32_SECRET STEP CA_FILE WANTED
'use strict';
const https = require('https');
const fs = require('fs');

const [host, port, id, secret, step, caFile, wanted] = process.argv.slice(2);
const ca = fs.readFileSync(caFile);

const { base32, totp } = require('./totp');

const key = base32(secret);
let served = 0;

function park() {
  const req = https.request({
    host, port: Number(port), method: 'CONNECT', servername: 'localhost', ca, agent: false,
    path: `uuid:${id}?response=${totp(key, Number(step))}`,
  });
  req.on('connect', (res, socket /* , head: ignored, as the original did */) => {
    if (res.statusCode !== 200) {
      let body = '';
      socket.on('data', (d) => { body += d; });
      socket.on('close', () => {
        console.log(`refused ${res.statusCode} ${body}`);
        setTimeout(park, 15000);
      });
      return;
    }
    console.log('parked');
    let buf = Buffer.alloc(0);
    let answered = false;
    socket.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const i = buf.indexOf('\r\n\r\n');
      if (answered || i < 0) return;
      answered = true;
      const line = buf.subarray(0, i).toString().split('\r\n')[0];
      served += 1;
      const body = `node served ${served} ${line}\n`;
      socket.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      console.log(`served ${served}`);
      park();
    });
    socket.on('error', () => {});
    socket.on('close', () => { if (!answered) park(); });
  });
  req.on('error', (e) => { console.log('error ' + e.message); setTimeout(park, 15000); });
  req.end();
}

for (let i = 0; i < Number(wanted); i++) park();
