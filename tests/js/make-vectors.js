// Signs known messages with the JavaScript reference (ssb-keys, ssb-validate)
// and prints them as JSON: the fixture tests/vectors/js-signed.json.
// Run: node tests/js/make-vectors.js > tests/vectors/js-signed.json
const ssbKeys = require('ssb-keys')
const V = require('ssb-validate')

const seed = Buffer.alloc(32, 7)
const keys = ssbKeys.generate('ed25519', seed)

const contents = [
  { type: 'test', f: 0.1, g: 1e21, h: 1.5e-7, i: -3.25, j: 123456789.125, k: 1e-7, l: 5e-324, m: 2 ** 53 + 2 },
  { type: 'post', text: 'emoji \ud83d\ude00 clef \ud834\udd1e accent \u00e9 cjk \u4e2d' },
  { type: 'test', b: 1, 10: 'ten', 2: 'two', a: { 1: 1, 0: 0, z: 'z' }, 4294967295: 'not an index' },
  { type: 'test', text: 'quote " backslash \\ newline \n tab \t ctrl \u0001 del \u007f ls \u2028' },
  { type: 'test', a: [], o: {}, n: null, t: true, arr: [1, [2, [3]], { x: [] }] },
  { type: 'log', text: 'float timestamp' }
]
const timestamps = [1700000000000, 1700000000001, 1700000000002, 1700000000003, 1700000000004, 1700000000005.5]

const out = { seed: seed.toString('hex'), id: keys.id, messages: [] }
let state = null
contents.forEach((content, i) => {
  // The key order the Scuttlebutt Protocol Guide gives: author before sequence.
  const msg = ssbKeys.signObj(keys, null, {
    previous: state ? state.id : null,
    author: keys.id,
    sequence: state ? state.sequence + 1 : 1,
    timestamp: timestamps[i],
    hash: 'sha256',
    content
  })
  const err = V.checkInvalid(state, null, msg)
  if (err) throw err
  const id = V.id(msg)
  out.messages.push({ key: id, value: msg })
  state = { id, sequence: msg.sequence, timestamp: msg.timestamp }
})

// ssb-server 16 itself (ssb-validate's create) puts sequence before author.
const swapped = V.create({ ...state, queue: [] }, keys, null, { type: 'log', text: 'written by ssb-validate create' }, 1700000000006)
if (V.checkInvalid(state, null, swapped)) throw new Error('swapped order should validate')
out.messages.push({ key: V.id(swapped), value: swapped })

process.stdout.write(JSON.stringify(out, null, 2) + '\n')
