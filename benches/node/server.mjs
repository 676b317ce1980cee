// The Node original, written as the blog post "Redis in Production" does it: one ioredis
// singleton, the INCR + EXPIRE pipeline limiter and the GET/SETEX cache-aside helper, served
// by express. `cargo xtask bench` runs it as the baseline:
//
//   REDIS_URL=redis://127.0.0.1:6390 PORT=3100 node server.mjs
//
// GET /plain              {"hello":"world"}, no Redis
// GET /api/hello          rateLimit(ip, LIMIT, 3600) then {"hello":"world"}; 429 when over
// GET /products/featured  getCachedData('products:featured', slow query, 300)
import express from 'express'
import { Redis } from 'ioredis'

const redis = new Redis(process.env.REDIS_URL, {
  maxRetriesPerRequest: 3,
  enableReadyCheck: false,
  lazyConnect: true,
})

redis.on('error', (err) => console.error('Redis error:', err))

async function getCachedData(key, fetcher, ttlSeconds = 300) {
  const cached = await redis.get(key)
  if (cached) return JSON.parse(cached)

  const data = await fetcher()
  await redis.setex(key, ttlSeconds, JSON.stringify(data))
  return data
}

async function rateLimit(identifier, limit = 10, windowSeconds = 60) {
  const key = `rate_limit:${identifier}`
  const pipeline = redis.pipeline()
  pipeline.incr(key)
  pipeline.expire(key, windowSeconds)
  const results = await pipeline.exec()
  const count = results[0][1]

  return {
    success: count <= limit,
    remaining: Math.max(0, limit - count),
  }
}

const LIMIT = Number(process.env.LIMIT ?? 4_000_000_000)
const FEATURED_DELAY_MS = Number(process.env.FEATURED_DELAY_MS ?? 100)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// The "database query" behind the cache: the same list as the Rust example app.
async function featuredFromDb() {
  await sleep(FEATURED_DELAY_MS)
  return [
    { id: 1, name: 'Rust mug', price_cents: 1200 },
    { id: 2, name: 'Ferris plush', price_cents: 2400 },
    { id: 3, name: 'Tower of Redis poster', price_cents: 900 },
  ]
}

const app = express()

app.get('/plain', (req, res) => {
  res.json({ hello: 'world' })
})

app.get('/api/hello', async (req, res) => {
  const ip = req.headers['x-forwarded-for'] ?? req.socket.remoteAddress ?? 'unknown'
  const { success } = await rateLimit(ip, LIMIT, 3600)
  if (!success) {
    return res
      .status(429)
      .set('X-RateLimit-Remaining', '0')
      .json({ error: 'Rate limit exceeded' })
  }
  res.json({ hello: 'world' })
})

app.get('/products/featured', async (req, res) => {
  const products = await getCachedData('products:featured', featuredFromDb, 60 * 5)
  res.json(products)
})

const port = Number(process.argv[2] ?? process.env.PORT ?? 3100)
app.listen(port, '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${port}`))
