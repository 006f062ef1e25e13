// Speaks to an ssb-server at the wire level (secret handshake + box stream +
// raw muxrpc frames), printing every frame it receives exactly as sent.
//   node invite-probe.js CAPS use INVITE [@FEED.ed25519]
//        redeem a legacy invite HOST:PORT:@KEY.ed25519~SEED as its guest key;
//        FEED defaults to a fresh id. Prints the reply frame of invite.use.
//   node invite-probe.js CAPS guest-calls INVITE
//        as the guest, call whoami, manifest, getAddress, createHistoryStream,
//        gossip.ping and ebt.replicate (all at once; prints what comes back in 3 s)
//   node invite-probe.js CAPS ebt HOST:PORT:@KEY.ed25519 [SECONDS] [NOTES]
//        as a fresh (non-guest) key, open ebt.replicate {version:3,format:"classic"}
//        and print all frames for SECONDS (default 15), incl. requests from the pub;
//        answers the pub's first clock with NOTES (default {})
// Output lines: "> " frame sent, "< " frame received (flags, req, raw body);
// PROBE_RAW=1 also logs raw TCP chunk sizes.
const net = require('net')
const crypto = require('crypto')
const pull = require('pull-stream')
const toPull = require('stream-to-pull-stream')
const Reader = require('pull-reader')
const Pushable = require('pull-pushable')
const shs = require('secret-handshake')
const sodium = require('chloride')
const ssbKeys = require('ssb-keys')

const [caps, cmd, target, arg, arg2] = process.argv.slice(2)
const t0 = Date.now()
const ms = () => String(Date.now() - t0).padStart(6) + 'ms '
const log = (s) => process.stdout.write(ms() + s + '\n')

function fail (err) {
  console.error(err && err.stack ? err.stack : String(err))
  process.exit(1)
}

// "HOST:PORT:@KEY.ed25519~SEED" or "HOST:PORT:@KEY.ed25519"
function parseAddr (s) {
  const [addr, seed] = s.split('~')
  const m = /^(.*):(\d+):@([A-Za-z0-9+/=]{44})\.ed25519$/.exec(addr)
  if (!m) fail('bad address ' + s)
  return { host: m[1], port: +m[2], key: Buffer.from(m[3], 'base64'), seed: seed && Buffer.from(seed, 'base64') }
}

function frame (flags, req, body) {
  const head = Buffer.alloc(9)
  head[0] = flags
  head.writeUInt32BE(body.length, 1)
  head.writeInt32BE(req, 5)
  return Buffer.concat([head, body])
}

// Connects, handshakes, and returns {send(flags, req, bodyString), close()}.
// onFrame(f) gets {flags, req, body (string or base64 for binary), stream, end}.
function connect (addr, keys, onFrame, cb) {
  const sock = net.connect(addr.port, addr.host)
  const duplex = toPull.duplex(sock)
  const client = shs.createClient(keys, Buffer.from(caps, 'base64'), 5000)
  const started = Date.now()
  const stream = client(addr.key, (err, s) => {
    if (err) return cb(err)
    log(`handshake ok as @${keys.publicKey.toString('base64')}.ed25519 (${Date.now() - started} ms)`)
    const out = Pushable()
    pull(out, s.sink)
    const reader = Reader()
    pull(s.source, reader)
    ;(function next () {
      reader.read(9, (err, head) => {
        if (err) return onFrame(null, err)
        const flags = head[0]
        const len = head.readUInt32BE(1)
        const req = head.readInt32BE(5)
        if (len === 0 && flags === 0 && req === 0) return onFrame({ goodbye: true }) // stop reading after GOODBYE
        reader.read(len, (err, body) => {
          if (err) return onFrame(null, err)
          const type = flags & 3
          onFrame({ flags, req, stream: !!(flags & 8), end: !!(flags & 4), type, body: type === 0 ? 'b64:' + body.toString('base64') : body.toString() })
          next()
        })
      })
    })()
    cb(null, {
      send (flags, req, body) {
        log(`> flags=0x${flags.toString(16).padStart(2, '0')} req=${req} ${body}`)
        out.push(frame(flags, req, Buffer.from(body)))
      },
      close () { out.push(Buffer.alloc(9)); out.end(); setTimeout(() => sock.destroy(), 200) }
    })
  })
  pull(duplex, stream, duplex)
  sock.on('error', (e) => fail(e))
  if (process.env.PROBE_RAW) { sock.on('data', (d) => log('raw chunk ' + d.length + ' bytes')); sock.on('end', () => log('raw TCP FIN from peer')) }
}

const show = (f) => `< flags=0x${f.flags.toString(16).padStart(2, '0')} req=${f.req} ${f.body}`

function guestKeys (invite) {
  const a = parseAddr(invite)
  if (!a.seed || a.seed.length !== 32) fail('invite has no 32-byte seed')
  return { addr: a, keys: sodium.crypto_sign_seed_keypair(a.seed) }
}

if (cmd === 'use') {
  const { addr, keys } = guestKeys(target)
  const feed = arg || ssbKeys.generate().id
  log('guest id @' + keys.publicKey.toString('base64') + '.ed25519, feed ' + feed)
  connect(addr, keys, (f, err) => {
    if (err) { log('stream ended: ' + (err === true ? 'EOF' : err)); return process.exit(0) }
    if (f.goodbye) return log('< GOODBYE')
    log(show(f))
    if (f.req === -1) { rpc.close(); setTimeout(() => process.exit(0), 300) }
  }, (err, r) => {
    if (err) fail(err)
    rpc = r
    rpc.send(0x02, 1, JSON.stringify({ name: ['invite', 'use'], args: [{ feed }] }))
  })
  var rpc
} else if (cmd === 'guest-calls') {
  const { addr, keys } = guestKeys(target)
  const self = '@' + keys.publicKey.toString('base64') + '.ed25519'
  const calls = [
    [0x02, { name: ['whoami'], args: [] }],
    [0x02, { name: ['manifest'], args: [] }],
    [0x02, { name: ['getAddress'], args: [] }],
    [0x0a, { name: ['createHistoryStream'], args: [{ id: addr.key && '@' + addr.key.toString('base64') + '.ed25519' }], type: 'source' }],
    [0x0a, { name: ['gossip', 'ping'], args: [{ timeout: 300000 }], type: 'duplex' }],
    [0x0a, { name: ['ebt', 'replicate'], args: [{ version: 3, format: 'classic' }], type: 'duplex' }]
  ]
  log('guest ' + self)
  connect(addr, keys, (f, err) => {
    if (err) { log('stream ended: ' + (err === true ? 'EOF' : err)); return process.exit(0) }
    if (f.goodbye) return log('< GOODBYE')
    log(show(f))
  }, (err, rpc) => {
    if (err) fail(err)
    calls.forEach(([flags, body], i) => rpc.send(flags, i + 1, JSON.stringify(body)))
    setTimeout(() => { rpc.close(); setTimeout(() => process.exit(0), 300) }, 3000)
  })
} else if (cmd === 'ebt') {
  const addr = parseAddr(target)
  const keys = sodium.crypto_sign_seed_keypair(crypto.randomBytes(32))
  const secs = +(arg || 15)
  let sentNotes = false
  connect(addr, keys, (f, err) => {
    if (err) { log('stream ended: ' + (err === true ? 'EOF' : err)); return process.exit(0) }
    if (f.goodbye) return log('< GOODBYE')
    log(show(f))
    // answer the pub's ebt clock once with an empty clock of our own
    if (f.req === -1 && !sentNotes && !f.end) { sentNotes = true; rpc.send(0x0a, 1, arg2 || '{}') }
  }, (err, r) => {
    if (err) fail(err)
    rpc = r
    rpc.send(0x0a, 1, JSON.stringify({ name: ['ebt', 'replicate'], args: [{ version: 3, format: 'classic' }], type: 'duplex' }))
    setTimeout(() => { rpc.close(); setTimeout(() => process.exit(0), 300) }, secs * 1000)
  })
  var rpc
} else {
  fail('unknown command ' + cmd)
}
