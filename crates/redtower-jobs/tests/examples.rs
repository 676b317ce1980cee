//! The `email_queue` example, run as a program over HTTP: in process, and over a test Redis
//! (a job added through one instance is run by the worker of either).

use std::time::{Duration, Instant};

use redtower_testkit::{Example, shared_url, unique_prefix};

const PACKAGE: &str = env!("CARGO_PKG_NAME");

/// Queues a mail through `POST /emails` on `producer`; the job is run (the worker prints the
/// mail with the job's id on one of `workers`) and `GET /jobs/{id}` answers `completed`.
fn queued_mail_is_sent(producer: &Example, workers: &[&Example]) {
    let res = producer.post("/emails", &[], b"ada@example.com");
    assert_eq!(res.status, 202, "{}", res.body);
    let id = res.body.clone();
    let sent = format!("welcome mail to ada@example.com (job {id}, attempt 1)");
    // The worker that took the job prints the line; look at each in turn.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !workers
        .iter()
        .any(|w| w.line(|l| l == sent, Duration::from_millis(100)).is_some())
    {
        assert!(Instant::now() < deadline, "no worker ran job {id}");
    }
    // The job is settled right after its handler returns: no event reaches HTTP clients, so
    // its state is polled.
    loop {
        let state = producer.get(&format!("/jobs/{id}"), &[]);
        assert_eq!(state.status, 200);
        if state.body == "completed" {
            break;
        }
        assert_eq!(state.body, "active");
        assert!(Instant::now() < deadline, "job {id} not completed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(producer.get("/jobs/nope", &[]).status, 404);
}

#[test]
fn in_process_a_queued_job_is_run_by_the_worker() {
    let example = Example::start(PACKAGE, "email_queue", &[]);
    queued_mail_is_sent(&example, &[&example]);
    assert!(example.interrupt().success());
}

#[test]
fn over_redis_a_job_queued_on_one_instance_is_run() {
    let url = shared_url();
    let prefix = unique_prefix("jobs-example");
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
    ];
    let one = Example::start(PACKAGE, "email_queue", &env);
    let two = Example::start(PACKAGE, "email_queue", &env);
    queued_mail_is_sent(&one, &[&one, &two]);
    assert!(one.interrupt().success());
    assert!(two.interrupt().success());
}
