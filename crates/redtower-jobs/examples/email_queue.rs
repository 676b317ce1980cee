//! A job producer and its worker in one program: `POST /emails` (body: an address) queues a
//! `welcome` job and answers its id, the worker sends the mail (a failed attempt is retried
//! with backoff), `GET /jobs/{id}` answers the job's state. In process, or over Redis with
//! `REDIS_URL` (then producers and workers can be separate processes).
//!
//! `cargo run -p redtower-jobs --example email_queue`, then
//! `curl -d ada@example.com localhost:3000/emails`. `ADDR`: the listen address.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::Path, extract::State, http::StatusCode, routing::get, routing::post};
use redtower_client::{Redis, RedisConfig};
use redtower_jobs::{Backoff, Job, JobContext, JobError, JobId, MemoryStore, Queue, QueueStore};
use redtower_jobs::{RedisStore, Worker};

#[derive(serde::Serialize, serde::Deserialize)]
struct WelcomeEmail {
    to: String,
}

impl Job for WelcomeEmail {
    const NAME: &'static str = "welcome"; // stable: it picks the handler
}

async fn send(email: WelcomeEmail, ctx: JobContext) -> Result<(), JobError> {
    println!(
        "welcome mail to {} (job {}, attempt {})",
        email.to,
        ctx.id(),
        ctx.attempt()
    );
    Ok(()) // an `Err` is retried after the backoff
}

type Emails = State<Queue<WelcomeEmail>>;

async fn enqueue(State(queue): Emails, to: String) -> Result<(StatusCode, String), StatusCode> {
    let backoff = Backoff::exponential(Duration::from_secs(1));
    let add = queue.add(WelcomeEmail { to }).attempts(3).backoff(backoff);
    let id = add.await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok((StatusCode::ACCEPTED, id.to_string()))
}

async fn job_state(State(queue): Emails, Path(id): Path<String>) -> Result<String, StatusCode> {
    let job = queue.get(&JobId::new(id)).await;
    let job = job.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    job.map(|job| job.state.to_string())
        .ok_or(StatusCode::NOT_FOUND)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store: Arc<dyn QueueStore> = match std::env::var("REDIS_URL") {
        Ok(_) => Arc::new(RedisStore::new(Redis::new(RedisConfig::from_env()?)?)),
        Err(_) => Arc::new(MemoryStore::new()),
    };
    let queue = Queue::<WelcomeEmail>::new(store.clone(), "email");
    let worker = Worker::new(store, "email")
        .handle::<WelcomeEmail>(send)
        .start();
    let app = Router::new()
        .route("/emails", post(enqueue))
        .route("/jobs/{id}", get(job_state))
        .with_state(queue);

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    worker.shutdown().await?; // waits for running jobs, hands unstarted ones back
    Ok(())
}
