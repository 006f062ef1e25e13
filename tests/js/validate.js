// Validates a feed with the JavaScript reference validator (ssb-validate).
// Reads one signed message value per line on stdin, in feed order; prints
// {"valid": N, "ids": [...]} or {"error": "..."} for the first invalid one.
const V = require('ssb-validate')
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter(Boolean)
let state = null
const ids = []
for (const [i, line] of lines.entries()) {
  const msg = JSON.parse(line)
  const err = V.checkInvalid(state, null, msg)
  if (err) {
    process.stdout.write(JSON.stringify({ error: `message ${i + 1}: ${err.message}` }) + '\n')
    process.exit(0)
  }
  const id = V.id(msg)
  ids.push(id)
  state = { id, sequence: msg.sequence, timestamp: msg.timestamp }
}
process.stdout.write(JSON.stringify({ valid: ids.length, ids }) + '\n')
