#!/usr/bin/env node
// Probe a running ssb-room 1.3.0 with two fresh identities A and B and print
// what goes over the wire (decrypted muxrpc frames: flags, req, body).
//
// usage: node probe.js HOST PORT CAPS_SHS ROOM_ID_OR_SECRET_FILE [--quiet-frames]
// env:   ENDPOINT_WAIT_MS (default 12000): how long to watch tunnel.endpoints
//
// Uses only packages that ssb-room itself installs (secret-handshake, muxrpc,
// ssb-keys, pull-stream, stream-to-pull-stream), no secret-stack client.
'use strict'
const net = require('net')
const fs = require('fs')
const pull = require('pull-stream')
const toPull = require('stream-to-pull-stream')
const Pushable = require('pull-pushable')
const shs = require('secret-handshake')
const muxrpc = require('muxrpc')
const ssbKeys = require('ssb-keys')

const [host, portS, caps, roomArg] = process.argv.slice(2)
const quietFrames = process.argv.includes('--quiet-frames')
if (!roomArg) {
  console.error('usage: node probe.js HOST PORT CAPS_SHS ROOM_ID_OR_SECRET_FILE')
  process.exit(2)
}
const port = Number(portS)
const ROOM = roomArg.startsWith('@') ? roomArg : ssbKeys.loadSync(roomArg).id
const ENDPOINT_WAIT_MS = Number(process.env.ENDPOINT_WAIT_MS || 12000)

const roomManifest = {
  whoami: 'async',
  manifest: 'async',
  room: { metadata: 'async' },
  invite: { use: 'async' },
  gossip: { ping: 'duplex' },
  tunnel: {
    announce: 'sync', leave: 'sync', isRoom: 'async', connect: 'duplex',
    endpoints: 'source', ping: 'sync'
  }
}

const t0 = Date.now()
const ts = () => ((Date.now() - t0) / 1000).toFixed(3).padStart(7) + 's'
const log = (...a) => console.log(ts(), ...a)

function pubBuf (id) { return Buffer.from(id.replace(/^@/, '').replace(/\.ed25519$/, ''), 'base64') }
function shsKeys (k) {
  return { publicKey: pubBuf(k.public), secretKey: Buffer.from(k.private.replace(/\.ed25519$/, ''), 'base64') }
}

// Parse the decrypted byte stream into packet-stream frames and print them.
function tap (who, dir) {
  let buf = Buffer.alloc(0)
  return pull.through(chunk => {
    if (quietFrames) return
    buf = Buffer.concat([buf, chunk])
    while (buf.length >= 9) {
      const flags = buf[0]; const len = buf.readUInt32BE(1); const req = buf.readInt32BE(5)
      if (flags === 0 && len === 0 && req === 0) { log(`${who} ${dir} GOODBYE`); buf = buf.slice(9); continue }
      if (buf.length < 9 + len) break
      const body = buf.slice(9, 9 + len); buf = buf.slice(9 + len)
      const type = flags & 3
      const shown = type === 0
        ? 'hex:' + body.slice(0, 24).toString('hex') + (len > 24 ? '…' : '')
        : JSON.stringify(body.toString('utf8'))
      log(`${who} ${dir} flags=0x${flags.toString(16).padStart(2, '0')}` +
        ` (${flags & 8 ? 'stream' : 'noStream'}${flags & 4 ? ',end' : ''},${['binary', 'string', 'json', '?'][type]})` +
        ` req=${req} len=${len} body=${shown}`)
    }
  })
}

function connect (who, keys, localApi, localManifest, cb) {
  const sock = net.connect(port, host)
  sock.on('error', err => cb(err))
  sock.on('connect', () => {
    const stream = toPull.duplex(sock)
    const hs = shs.createClient(shsKeys(keys), Buffer.from(caps, 'base64'), 10e3)(pubBuf(ROOM), (err, box) => {
      if (err) return cb(err)
      const rpc = muxrpc(roomManifest, localManifest, localApi, ROOM, null, null, false)
      pull(box, tap(who, '<-'), rpc.stream, tap(who, '->'), box)
      rpc.on('closed', () => log(`${who} rpc closed`))
      cb(null, rpc, sock)
    })
    pull(hs, stream, hs)
  })
}

const A = ssbKeys.generate()
const B = ssbKeys.generate()
const ABSENT = ssbKeys.generate().id
console.log('room', ROOM)
console.log('A   ', A.id)
console.log('B   ', B.id)

// Bytes used to check the tunnel is binary-transparent.
const fromB = Buffer.from([...Array(256).keys()]) // 00..ff
const fromA = Buffer.concat([Buffer.from('A->B '), Buffer.from([0, 0xff, 0x80, 0x0a, 0x0d])])
const results = {}

// A's local API: what the room may call on A.
const aManifest = { tunnel: { connect: 'duplex', isRoom: 'async' } }
const aApi = {
  tunnel: {
    isRoom (cb) { log('A: room called tunnel.isRoom on A'); cb(null, false) },
    connect (...args) {
      log('A: incoming tunnel.connect, this.id =', this.id, 'args =', JSON.stringify(args))
      results.aArgs = args
      const out = Pushable()
      out.push(fromA)
      return {
        source: out,
        sink: pull.collect((err, chunks) => {
          log('A: tunnel sink ended', err ? 'err=' + err.message : 'ok')
          results.aGot = Buffer.concat(chunks)
          log('A: chunks', chunks.map(c => (Buffer.isBuffer(c) ? 'Buffer' : typeof c) + '(' + c.length + ')').join(' '))
          out.end()
        })
      }
    }
  }
}

function call (who, rpc, name, fn) {
  return new Promise(resolve => fn((err, val) => {
    log(`${who}: ${name} ->`, err ? 'ERROR ' + JSON.stringify(err.message) : JSON.stringify(val))
    resolve([err, val])
  }))
}

function connectP (who, keys, api, man) {
  return new Promise((resolve, reject) => connect(who, keys, api, man, (err, rpc, sock) => err ? reject(err) : resolve({ rpc, sock })))
}

async function main () {
  const { rpc: a, sock: sockA } = await connectP('A', A, aApi, aManifest)
  const { rpc: b, sock: sockB } = await connectP('B', B, {}, {})
  log('both connected')

  await call('A', a, 'tunnel.isRoom', cb => a.tunnel.isRoom(cb))
  await call('A', a, 'tunnel.ping', cb => a.tunnel.ping(cb))
  await call('A', a, 'whoami', cb => a.whoami(cb))
  await call('A', a, 'room.metadata', cb => a.room.metadata(cb))
  await call('A', a, 'tunnel.announce', cb => a.tunnel.announce(cb))

  // B subscribes to endpoints (which also makes B present).
  const seen = []
  pull(b.tunnel.endpoints(), pull.drain(list => {
    seen.push(list)
    log('B: endpoints update #' + seen.length, JSON.stringify(list))
  }, err => log('B: endpoints ended', err && err.message)))

  // Tunnel from B to A. B keeps its half open until it has A's bytes: a JS
  // muxrpc duplex treats an incoming end as a full close (see NOTES.md).
  await new Promise(resolve => {
    const d = b.tunnel.connect({ target: A.id, portal: ROOM })
    const out = Pushable()
    out.push(fromB.slice(0, 100)); out.push(fromB.slice(100))
    pull(out, d.sink)
    const chunks = []
    pull(d.source, pull.drain(c => {
      chunks.push(c)
      if (Buffer.concat(chunks).length >= fromA.length) { log('B: got A\'s bytes, ending'); out.end() }
    }, err => {
      log('B: tunnel source ended', err && err !== true ? 'err=' + err.message : 'ok')
      results.bGot = Buffer.concat(chunks)
      resolve()
    }))
  })
  await new Promise(resolve => setTimeout(resolve, 300))
  log('B->A bytes intact:', !!results.aGot && results.aGot.equals(fromB), `(${results.aGot && results.aGot.length} bytes)`)
  log('A->B bytes intact:', !!results.bGot && results.bGot.equals(fromA), `(${results.bGot && results.bGot.length} bytes)`)

  // Half-close: B writes and ends at once, then reads. Shows the tunnel is
  // torn down by the first end (B reads nothing of A's).
  results.aGot = null
  await new Promise(resolve => {
    const d = b.tunnel.connect({ target: A.id, portal: ROOM })
    pull(pull.values([Buffer.from('half')]), d.sink)
    pull(d.source, pull.collect((err, chunks) => {
      log('B: half-close tunnel source ended', err ? 'err=' + err.message : 'ok', 'bytes=' + Buffer.concat(chunks).length)
      resolve()
    }))
  })
  await new Promise(resolve => setTimeout(resolve, 300))
  log('half-close: A got', results.aGot ? results.aGot.length + ' bytes' : 'nothing')

  // Tunnel to an absent target.
  await new Promise(resolve => {
    const d = b.tunnel.connect({ target: ABSENT, portal: ROOM })
    pull(pull.values([Buffer.from('hello')]), d.sink)
    pull(d.source, pull.collect((err, chunks) => {
      log('B: absent-target tunnel ended', err ? 'err=' + JSON.stringify(err.message) : 'ok', 'chunks=' + chunks.length)
      resolve()
    }))
  })
  // No args at all.
  await new Promise(resolve => {
    const d = b.tunnel.connect()
    pull(pull.empty(), d.sink)
    pull(d.source, pull.collect(err => {
      log('B: no-opts tunnel ended', err ? 'err=' + JSON.stringify(err.message) : 'ok')
      resolve()
    }))
  })

  await new Promise(resolve => setTimeout(resolve, ENDPOINT_WAIT_MS))
  await call('A', a, 'tunnel.leave', cb => a.tunnel.leave(cb))
  await new Promise(resolve => setTimeout(resolve, 300))
  log('endpoint updates seen by B:', seen.length)
  a.close(() => {}); b.close(() => {})
  setTimeout(() => { sockA.destroy(); sockB.destroy(); process.exit(0) }, 500)
}

main().catch(err => { console.error('probe failed:', err); process.exit(1) })
