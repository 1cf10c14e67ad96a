// Socket.IO 4.8 on Node in the shape the load tool drives (`load --server socketio`):
// WebSocket clients that emit `subscribe` with a channel and get `subscribed`, then each
// message as a `message` event; `POST /publish` with Cascade's body, emitted to the
// channel's room. One process, started on CASCADE_LISTEN; see BENCHMARKS.md.
import http from 'node:http';
import { Server } from 'socket.io';

const listen = process.env.CASCADE_LISTEN || '127.0.0.1:8090';
const at = listen.lastIndexOf(':');
const host = listen.slice(0, at);
const port = Number(listen.slice(at + 1));

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"status":"ok"}');
    return;
  }
  if (req.method === 'POST' && req.url === '/publish') {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end('{"error":"bad json"}');
        return;
      }
      io.to(String(body.channel)).emit('message', body.data);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"ok":true}');
    });
    return;
  }
  res.writeHead(404);
  res.end();
});

// WebSocket only, uncompressed: the rung Cascade is compared on.
const io = new Server(server, { transports: ['websocket'], serveClient: false, perMessageDeflate: false });
io.on('connection', (socket) => {
  socket.on('subscribe', (channel) => {
    socket.join(String(channel));
    socket.emit('subscribed');
  });
});

server.listen(port, host);
