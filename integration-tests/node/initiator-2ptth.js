// A 2ptth initiator as the original was used: TLS offering only ALPN "2ptth", then an
// HTTP/2 *server* on that socket (roles reversed), answering every request it is sent.
// Usage: node initiator-2ptth.js HOST PORT SERVERNAME CA_FILE
'use strict';
const tls = require('tls');
const http2 = require('http2');
const fs = require('fs');

const [host, port, servername, caFile] = process.argv.slice(2);
if (typeof http2.performServerHandshake !== 'function') {
  console.log(`error: node ${process.version} has no http2.performServerHandshake (20.12 or later needed)`);
  process.exit(3);
}
const socket = tls.connect(
  { host, port: Number(port), servername, ca: fs.readFileSync(caFile), ALPNProtocols: ['2ptth'] },
  () => {
    if (socket.alpnProtocol !== '2ptth') {
      console.log('error: negotiated ' + socket.alpnProtocol);
      process.exit(2);
    }
    const session = http2.performServerHandshake(socket);
    session.on('stream', (stream, headers) => {
      const chunks = [];
      stream.on('data', (c) => chunks.push(c));
      stream.on('end', () => {
        stream.respond({ ':status': 200, 'content-type': 'text/plain', 'x-initiator': '2ptth' });
        stream.end(`2ptth ${headers[':method']} ${headers[':path']} authority=${headers[':authority']} body=${Buffer.concat(chunks).length}\n`);
      });
    });
    session.on('close', () => process.exit(0));
    console.log('connected');
  },
);
socket.on('error', (e) => {
  console.log('error: ' + e.message);
  process.exit(1);
});
