// Scores cache-tests result files with the suite's own `determineTestResult`.
//
// usage: node score.mjs SUITE_DIR OURS.json
// Prints JSON: the test counts, one score per cache (ours first, then every file listed in the
// suite's results/index.mjs) and the required/optimal tests ours does not pass.
import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const [suiteDir, oursFile] = process.argv.slice(2)
const load = rel => import(pathToFileURL(path.join(suiteDir, rel)).href)
const { default: suites } = await load('tests/index.mjs')
const { determineTestResult, resultTypes } = await load('test-engine/lib/results.mjs')
const { default: index } = await load('results/index.mjs')

// The tests a reverse proxy runs (test-engine/client/runner.mjs skips `browser_only` ones
// when not testing a browser); no `kind` means required.
const tests = []
for (const suite of suites) {
  for (const test of suite.tests) {
    if (test.browser_only === true) continue
    const kind = test.kind === undefined ? 'required' : test.kind
    tests.push({ suite: suite.name, id: test.id, name: test.name, kind, depends_on: test.depends_on })
  }
}
const counts = { required: 0, optimal: 0, check: 0 }
for (const t of tests) counts[t.kind]++

const passes = r => r === resultTypes.pass || r === resultTypes.yes
const label = r => Object.keys(resultTypes).find(k => resultTypes[k] === r)

function score (results) {
  const out = { required: 0, optimal: 0, check: 0 }
  for (const t of tests) {
    if (passes(determineTestResult(suites, t.id, results))) out[t.kind]++
  }
  return out
}

function failures (results) {
  const out = []
  for (const t of tests) {
    if (t.kind === 'check') continue
    const r = determineTestResult(suites, t.id, results)
    if (passes(r)) continue
    const raw = results[t.id]
    let detail = Array.isArray(raw) ? raw.slice(0, 2).join(': ') : ''
    if (r === resultTypes.dependency_fail) {
      const failed = (t.depends_on || []).filter(d => !passes(determineTestResult(suites, d, results)))
      const own = raw === true ? 'passes on its own' : `on its own: ${detail}`
      detail = `prerequisite ${failed.join(', ')} fails (${own})`
    }
    out.push({ id: t.id, name: t.name, kind: t.kind, suite: t.suite, result: label(r), detail })
  }
  return out
}

const ours = JSON.parse(fs.readFileSync(oursFile, 'utf8'))
const caches = [{ name: 'redtower', type: 'this run', version: '', ...score(ours) }]
for (const item of index) {
  const file = path.join(suiteDir, 'results', item.file)
  if (!fs.existsSync(file)) continue
  const results = JSON.parse(fs.readFileSync(file, 'utf8'))
  caches.push({ name: item.name, type: item.type, version: item.version || '', ...score(results) })
}
console.log(JSON.stringify({ counts, caches, failures: failures(ours) }))
