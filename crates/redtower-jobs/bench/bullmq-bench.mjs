// BullMQ side of the redtower-jobs benchmark. Usage: REDIS_PORT=6390 N=50000 node bullmq-bench.mjs
// Prints one JSON line: jobs/s for bulk enqueue, single enqueue and processing at concurrency 50,
// job schedulers, and a rate-limited queue (limiter 100 per 100 ms: steady start rate after the
// first window, and throughput over the whole run).
import { Queue, Worker } from 'bullmq';

const port = Number(process.env.REDIS_PORT ?? 6379);
const N = Number(process.env.N ?? 50000);
const BATCH = 1000; // jobs per addBulk call
const INFLIGHT = 50; // concurrent single adds
const connection = { host: '127.0.0.1', port };
const opts = { removeOnComplete: { count: 1000 }, removeOnFail: { count: 10000 } };

async function fresh(name) {
  const q = new Queue(name, { connection });
  await q.obliterate({ force: true }).catch(() => {});
  return q;
}

async function bulk(q) {
  const t = performance.now();
  for (let i = 0; i < N; i += BATCH) {
    const jobs = [];
    for (let j = i; j < Math.min(N, i + BATCH); j++) jobs.push({ name: 'noop', data: { n: j }, opts });
    await q.addBulk(jobs);
  }
  return N / ((performance.now() - t) / 1000);
}

async function single(q) {
  const t = performance.now();
  for (let i = 0; i < N; i += INFLIGHT) {
    const adds = [];
    for (let j = i; j < Math.min(N, i + INFLIGHT); j++) adds.push(q.add('noop', { n: j }, opts));
    await Promise.all(adds);
  }
  return N / ((performance.now() - t) / 1000);
}

// Job schedulers: NS schedulers (every hour) upserted 50 in flight, until each one's first job
// is in the queue (upsertJobScheduler adds it).
async function schedulers(q, NS) {
  const t = performance.now();
  for (let i = 0; i < NS; i += INFLIGHT) {
    const adds = [];
    for (let j = i; j < Math.min(NS, i + INFLIGHT); j++) {
      adds.push(q.upsertJobScheduler('s' + j, { every: 3600000 }, { name: 'noop', data: { n: j }, opts }));
    }
    await Promise.all(adds);
  }
  for (;;) {
    const c = await q.getJobCounts('wait', 'delayed', 'prioritized');
    if (c.wait + c.delayed + c.prioritized >= NS) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  return NS / ((performance.now() - t) / 1000);
}

async function processing(q, name) {
  let done = 0;
  let resolve;
  const finished = new Promise((r) => (resolve = r));
  const t = performance.now();
  const worker = new Worker(name, async () => {}, { connection, concurrency: 50 });
  worker.on('completed', () => {
    done += 1;
    if (done === N) resolve();
  });
  await finished;
  const rate = N / ((performance.now() - t) / 1000);
  await worker.close();
  return rate;
}

// Rate-limited queue: M jobs, limiter { max: 100, duration: 100 } (1,000/s), concurrency 50.
async function rateLimited(M) {
  const name = 'bench-rate';
  const q = await fresh(name);
  for (let i = 0; i < M; i += BATCH) {
    const jobs = [];
    for (let j = i; j < Math.min(M, i + BATCH); j++) jobs.push({ name: 'noop', data: { n: j }, opts });
    await q.addBulk(jobs);
  }
  const starts = [];
  let resolve;
  const finished = new Promise((r) => (resolve = r));
  const t = performance.now();
  const worker = new Worker(name, async () => {
    starts.push(performance.now());
    if (starts.length === M) resolve();
  }, { connection, concurrency: 50, limiter: { max: 100, duration: 100 } });
  await finished;
  const total = M / ((performance.now() - t) / 1000);
  await worker.close();
  starts.sort((a, b) => a - b);
  const steady = (M - 100) / ((starts[M - 1] - starts[0]) / 1000);
  await q.obliterate({ force: true });
  await q.close();
  return { steady, total };
}

const q1 = await fresh('bench-bulk');
const bulkRate = await bulk(q1);
await q1.obliterate({ force: true });
const q2 = await fresh('bench-single');
const singleRate = await single(q2);
await q2.obliterate({ force: true });
const q3 = await fresh('bench-process');
await bulk(q3);
const processRate = await processing(q3, 'bench-process');
await q3.obliterate({ force: true });
const q4 = await fresh('bench-sched');
const schedRate = await schedulers(q4, Math.max(1, Math.floor(N / 10)));
await q4.obliterate({ force: true });
const rate = await rateLimited(Math.max(1000, Math.floor(N / 10)));
await Promise.all([q1.close(), q2.close(), q3.close(), q4.close()]);
console.log(JSON.stringify({
  bulk: bulkRate, single: singleRate, process: processRate, schedulers: schedRate,
  rate_steady: rate.steady, rate_total: rate.total,
}));
process.exit(0);
