// BullMQ side of the redtower-jobs benchmark. Usage: REDIS_PORT=6390 N=50000 node bullmq-bench.mjs
// Prints one JSON line: jobs/s for bulk enqueue, single enqueue and processing at concurrency 50,
// schedulers created with their first job per second, repeatable jobs (tick jobs/s and
// redis-server CPU µs per tick), flows (1 parent + 10 children) completed per second, and a
// rate-limited queue (limiter 100 per 100 ms: steady start rate after the first window, and
// throughput over the whole run).
import { FlowProducer, Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';

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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const admin = new Redis({ host: '127.0.0.1', port, lazyConnect: true });

async function redisCpu() {
  const info = await admin.info('cpu');
  let s = 0;
  for (const l of info.split('\n')) {
    if (l.startsWith('used_cpu_sys:') || l.startsWith('used_cpu_user:')) s += Number(l.split(':')[1]);
  }
  return s;
}

// Repeatable jobs: NS schedulers every second (upserted 50 in flight), one worker at concurrency
// 50 with a no-op handler; over 5 s after a 2 s warm-up, the tick jobs completed per second and
// redis-server's CPU per tick (the same measure as redtower-jobs').
async function ticks(q, name, NS) {
  for (let i = 0; i < NS; i += INFLIGHT) {
    const adds = [];
    for (let j = i; j < Math.min(NS, i + INFLIGHT); j++) {
      adds.push(q.upsertJobScheduler('t' + j, { every: 1000 }, { name: 'noop', data: { n: j }, opts }));
    }
    await Promise.all(adds);
  }
  let done = 0;
  const worker = new Worker(name, async () => {}, { connection, concurrency: 50 });
  worker.on('completed', () => {
    done += 1;
  });
  await sleep(2000);
  const before = done;
  const cpu = await redisCpu();
  const t = performance.now();
  await sleep(5000);
  const jobs = Math.max(1, done - before);
  const rate = jobs / ((performance.now() - t) / 1000);
  const us = ((await redisCpu()) - cpu) * 1e6 / jobs;
  await worker.close();
  return { rate, us };
}

// Flows: NF flows of one parent ('bench-flow') and 10 children ('bench-flow-kids'), added 50
// in flight with FlowProducer while workers (concurrency 50 each) run both queues, until every
// parent completed: flows per second.
async function flows(NF) {
  const pq = await fresh('bench-flow');
  const cq = await fresh('bench-flow-kids');
  const producer = new FlowProducer({ connection });
  let done = 0;
  let resolve;
  const finished = new Promise((r) => (resolve = r));
  const kids = new Worker('bench-flow-kids', async () => {}, { connection, concurrency: 50 });
  const parents = new Worker('bench-flow', async () => {}, { connection, concurrency: 50 });
  parents.on('completed', () => {
    done += 1;
    if (done === NF) resolve();
  });
  const t = performance.now();
  for (let i = 0; i < NF; i += INFLIGHT) {
    const adds = [];
    for (let j = i; j < Math.min(NF, i + INFLIGHT); j++) {
      const children = [];
      for (let k = 0; k < 10; k++) {
        children.push({ name: 'child', queueName: 'bench-flow-kids', data: { n: j, k }, opts });
      }
      adds.push(producer.add({ name: 'parent', queueName: 'bench-flow', data: { n: j }, opts, children }));
    }
    await Promise.all(adds);
  }
  await finished;
  const rate = NF / ((performance.now() - t) / 1000);
  await Promise.all([kids.close(), parents.close(), producer.close()]);
  await pq.obliterate({ force: true });
  await cq.obliterate({ force: true });
  await Promise.all([pq.close(), cq.close()]);
  return rate;
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
const q5 = await fresh('bench-ticks');
const t = await ticks(q5, 'bench-ticks', Math.max(1, Math.floor(N / 10)));
await q5.obliterate({ force: true }).catch(() => {});
const flowRate = await flows(Math.max(1, Math.floor(N / 100)));
const rate = await rateLimited(Math.max(1000, Math.floor(N / 10)));
await Promise.all([q1.close(), q2.close(), q3.close(), q4.close(), q5.close(), admin.quit()]);
console.log(
  JSON.stringify({
    bulk: bulkRate,
    single: singleRate,
    process: processRate,
    schedulers: schedRate,
    ticks: t.rate,
    ticks_redis_us: t.us,
    flows: flowRate,
    rate_steady: rate.steady,
    rate_total: rate.total,
  }),
);
process.exit(0);
