// Drives a running ssb-server through ssb-client, for the interop tests.
//   node sbot.js PATH PORT CAPS whoami
//   node sbot.js PATH PORT CAPS publish '{"type":"log","text":"hi"}'
//   node sbot.js PATH PORT CAPS publish-many COUNT   (type log, text "line N")
//   node sbot.js PATH PORT CAPS follow @ID
//   node sbot.js PATH PORT CAPS history @ID          (the stored feed, as JSON lines of values)
//   node sbot.js PATH PORT CAPS latest @ID           (the latest sequence stored, or 0)
//   node sbot.js PATH PORT CAPS connect net:HOST:PORT~shs:KEY
//   node sbot.js PATH PORT CAPS invite-create USES   (HOST:PORT:@KEY.ed25519~SEED;
//                                                     the server needs allowPrivate for a 10.x/127 host)
// Content is passed as JSON, never as CLI flags, so no connection flag can
// leak into a message.
const ssbClient = require('ssb-client')
const ssbKeys = require('ssb-keys')
const pull = require('pull-stream')

const [path, port, caps, cmd, arg] = process.argv.slice(2)
const keys = ssbKeys.loadSync(path + '/secret')
const host = process.env.SBOT_HOST || '127.0.0.1'
const remote = `net:${host}:${port}~shs:${keys.public.replace('.ed25519', '')}`

function fail (err) {
  console.error(err && err.stack ? err.stack : String(err))
  process.exit(1)
}

ssbClient(keys, { remote, caps: { shs: caps }, manifest: require(path + '/manifest.json') }, (err, sbot) => {
  if (err) fail(err)
  const done = (err, out) => {
    if (err) fail(err)
    if (out !== undefined) process.stdout.write(typeof out === 'string' ? out + '\n' : JSON.stringify(out) + '\n')
    sbot.close(() => process.exit(0))
  }
  switch (cmd) {
    case 'whoami': return sbot.whoami((e, r) => done(e, r && r.id))
    case 'publish': return sbot.publish(JSON.parse(arg), (e, m) => done(e, m && m.key))
    case 'publish-many': {
      let i = 0
      const n = +arg
      const next = () => {
        if (i >= n) return done(null, String(n))
        i++
        sbot.publish({ type: 'log', text: 'line ' + i }, (e) => e ? fail(e) : next())
      }
      return next()
    }
    case 'follow': return sbot.publish({ type: 'contact', contact: arg, following: true }, (e, m) => done(e, m && m.key))
    case 'history': return pull(sbot.createHistoryStream({ id: arg, keys: false }), pull.collect((e, msgs) => {
      if (e) return fail(e)
      for (const m of msgs) process.stdout.write(JSON.stringify(m) + '\n')
      done(null)
    }))
    case 'latest': return sbot.latestSequence(arg, (e, seq) => done(null, String(e ? 0 : seq)))
    case 'connect': return sbot.gossip.connect(arg, (e) => done(e, 'connected'))
    case 'invite-create': return sbot.invite.create({ uses: +arg }, (e, code) => done(e, code))
    default: fail('unknown command ' + cmd)
  }
})
