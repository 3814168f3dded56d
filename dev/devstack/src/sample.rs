//! `run`: four sample orders, one for each final status, each shown with its final state, its
//! event history and its trace (a timeline and a link to its waterfall).

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::{Value, json};

use crate::stack::Stack;

struct Sample<'a> {
    stack: &'a Stack,
    http: reqwest::blocking::Client,
    api: String,
    zipkin: String,
    /// The operator's token, for `orderctl trace`.
    token: String,
    /// Why traces are not shown, when they are not.
    zipkin_note: Option<String>,
    failed: bool,
}

/// Posts the four orders to the running `stack` and reports them; whether all ended as expected.
pub fn run(stack: &Stack) -> anyhow::Result<bool> {
    // An operator's token: the samples are orders of several customers.
    let token = crate::tokens::operator(
        &crate::tokens::load(&stack.layout.dir)?,
        Duration::from_secs(3600),
    );
    let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token as a header")?;
    bearer.set_sensitive(true);
    let headers = reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, bearer)]);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .default_headers(headers)
        .build()
        .context("HTTP client")?;
    let zipkin = stack
        .zipkin_url()
        .unwrap_or_else(|| "http://127.0.0.1:9411".to_owned());
    let zipkin_note = if std::env::var("ZIPKIN_ENDPOINT").is_ok_and(|e| e.is_empty()) {
        Some("The traces were not exported: ZIPKIN_ENDPOINT is empty.".to_owned())
    } else if http
        .get(format!("{zipkin}/health"))
        .send()
        .is_ok_and(|r| r.status().is_success())
    {
        None
    } else {
        Some(format!(
            "Nothing answers Zipkin's API at {zipkin}, so these traces were dropped (scripts/stack \
             status says why; scripts/stack start starts tracestore there when the port is free)."
        ))
    };
    let mut sample = Sample {
        stack,
        http,
        api: stack.endpoints().api_url(),
        zipkin,
        token,
        zipkin_note,
        failed: false,
    };
    sample.orders()?;
    Ok(!sample.failed)
}

fn step(what: &str) {
    println!("\n==> {what}");
}

impl Sample<'_> {
    fn orders(&mut self) -> anyhow::Result<()> {
        // New customers every run: each starts with the initial credit (1000.00).
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let run = format!("{}-{}", now.as_secs() % 86_400, now.subsec_micros());
        step(&format!("posting four sample orders to {}", self.api));
        let approved = self.place(&format!("approved-{run}"), "p1", "Pizza", "12.50", 2)?;
        line(
            "2 x 12.50 = 25.00, within credit and the review limit:",
            &approved,
        );
        let broke = self.place(&format!("broke-{run}"), "p2", "Banquet", "1500.00", 1)?;
        line("1 x 1500.00, over the 1000.00 initial credit:", &broke);
        let rejected = self.place(&format!("big-{run}"), "p3", "Catering", "600.00", 1)?;
        line(
            "1 x 600.00, within credit, over the 500.00 review limit:",
            &rejected,
        );
        // Sent at once: the cancel races the workers (payment and review take milliseconds).
        let fickle = self.place(&format!("fickle-{run}"), "p1", "Pizza", "12.50", 1)?;
        let (status, body) = self.request(
            self.http
                .post(format!("{}/api/orders/{fickle}/cancel", self.api))
                .json(&json!({"reason": "changed my mind"})),
        );
        match status {
            200..=202 => line("1 x 12.50, cancelled right away:", &fickle),
            409 => println!(
                "  1 x 12.50, cancel answered 409: the workers were faster, the order is already \
                 final ({body})"
            ),
            _ => {
                println!("  cancel of {fickle} answered {status}: {body}");
                self.failed = true;
            }
        }

        self.report("Approved", &approved, "Approved");
        self.report("PaymentFailed", &broke, "PaymentFailed");
        self.report("Rejected (then refunded)", &rejected, "Rejected");
        if status == 409 {
            self.report("Cancel came too late", &fickle, "Approved");
        } else {
            self.report("Cancelled", &fickle, "Cancelled");
        }
        if let Some(note) = &self.zipkin_note {
            println!("\n{note}");
        }
        println!(
            "\nThe stack keeps running:\n  scripts/stack status             every process, its \
             port and health\n  scripts/stack logs [-f] [NAME]   logs (eventstore, ordersvc, \
             paymentworker, ...)\n  scripts/stack stop               stops it all\n  \
             eval \"$(scripts/stack env)\"; curl -s -H \"Authorization: Bearer $ORDERCTL_TOKEN\" \
             {}/api/orders/{approved}",
            self.api
        );
        Ok(())
    }

    /// The status and the body (JSON, or the text as a JSON string; status 0 when no answer).
    fn request(&self, request: reqwest::blocking::RequestBuilder) -> (u16, Value) {
        match request.send() {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                (status, body)
            }
            Err(error) => (0, Value::String(error.to_string())),
        }
    }

    fn place(
        &self,
        customer: &str,
        code: &str,
        name: &str,
        price: &str,
        quantity: u32,
    ) -> anyhow::Result<String> {
        let body = json!({
            "customer_id": customer,
            "restaurant_id": "r1",
            "order_items": [{"code": code, "name": name, "unit_price": price, "quantity": quantity}],
        });
        let (status, body) = self.request(
            self.http
                .post(format!("{}/api/orders", self.api))
                .json(&body),
        );
        anyhow::ensure!(status == 201, "POST /api/orders answered {status}: {body}");
        body["order_id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no order_id in {body}"))
    }

    /// Waits until the order is final (and refunded when a debit has to be given back); prints
    /// it, its events and its trace.
    fn report(&mut self, title: &str, order_id: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut status, mut order);
        loop {
            (status, order) =
                self.request(self.http.get(format!("{}/api/orders/{order_id}", self.api)));
            if status == 200 && settled(&order) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        step(&format!("{title}: order {order_id}"));
        if status != 200 {
            println!("  GET /api/orders/{order_id} answered {status}: {order}");
            self.failed = true;
            return;
        }
        let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let reason = order["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(|r| format!(", reason: {r}"))
            .unwrap_or_default();
        println!(
            "  status {} (expected {expected}), amount {}, refunded {}, version {}{reason}",
            text(&order["status"]),
            text(&order["amount"]),
            order["refunded"].as_bool().unwrap_or(false),
            text(&order["version"]),
        );
        if !settled(&order) {
            println!("  not final after 30 s (scripts/stack logs to see why)");
            self.failed = true;
        }
        if order["status"] != expected {
            self.failed = true;
        }

        let (status, events) = self.request(
            self.http
                .get(format!("{}/api/orders/{order_id}/events", self.api)),
        );
        match events.as_array() {
            Some(events) if status == 200 => {
                println!("  events:");
                for event in events {
                    let data = &event["data"];
                    let detail: Vec<String> = ["amount", "reason"]
                        .iter()
                        .filter(|k| !data[**k].is_null())
                        .map(|k| format!("{k} {}", text(&data[*k])))
                        .collect();
                    println!(
                        "    v{:<2} {:<16} {}  {}",
                        text(&event["version"]),
                        text(&event["event_type"]),
                        text(&event["created_at"]),
                        detail.join(", ")
                    );
                }
            }
            _ => println!("  GET /api/orders/{order_id}/events answered {status}: {events}"),
        }

        let zipkin = &self.zipkin;
        match order["trace_id"].as_str() {
            None | Some("") => println!(
                "  trace: none recorded for this order (tracing export to Zipkin is not set up)"
            ),
            Some(trace_id) if self.zipkin_note.is_some() => {
                println!("  trace: {zipkin}/zipkin/traces/{trace_id} (not exported, see below)");
            }
            Some(trace_id) => {
                self.settled_trace(trace_id);
                println!("  trace (orderctl trace {order_id}):");
                let orderctl = self.stack.layout.bin_dir.join("orderctl");
                match Command::new(&orderctl)
                    .env("ORDERCTL_TOKEN", &self.token)
                    .args([
                        "--api-url",
                        &self.api,
                        "trace",
                        "--zipkin-url",
                        zipkin,
                        order_id,
                    ])
                    .output()
                {
                    Ok(output) => {
                        let all = [output.stdout, output.stderr].concat();
                        for line in String::from_utf8_lossy(&all).lines() {
                            println!("    {line}");
                        }
                    }
                    Err(error) => println!("    {}: {error}", orderctl.display()),
                }
                println!("  trace: {zipkin}/zipkin/traces/{trace_id}");
            }
        }
    }

    /// Waits (at most 15 s) until the trace's span count stops growing: services export in
    /// batches.
    fn settled_trace(&self, trace_id: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = None;
        while Instant::now() < deadline {
            let (_, spans) = self.request(
                self.http
                    .get(format!("{}/api/v2/trace/{trace_id}", self.zipkin)),
            );
            let count = spans.as_array().map_or(0, Vec::len);
            if count != 0 && last == Some(count) {
                return;
            }
            last = Some(count);
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
}

fn line(what: &str, order_id: &str) {
    println!("  {what:<58} {order_id}");
}

/// Final, and refunded when a debit has to be given back (a Rejected order, or one cancelled
/// after its debit: version 3 or more).
fn settled(order: &Value) -> bool {
    let status = order["status"].as_str().unwrap_or_default();
    let refund_due = (status == "Rejected"
        || (status == "Cancelled" && order["version"].as_i64() >= Some(3)))
        && order["refunded"] != Value::Bool(true);
    let is_final = status
        .parse::<order_domain::OrderStatus>()
        .is_ok_and(order_domain::OrderStatus::is_final);
    is_final && !refund_due
}
