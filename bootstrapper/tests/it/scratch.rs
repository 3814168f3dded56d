use crate::Servers;
#[tokio::test]
async fn scratch_probe() {
    let servers = Servers::nats_only();
    let js = servers.jetstream().await;
    bootstrapper::ensure_stream(&js, 1).await.expect("ok");
    bootstrapper::ensure_consumers(&js).await.expect("ok");
    let orders = js.get_stream("ORDERS").await.expect("x");
    let mut c = pipeline_runtime::stream::consumer("reviewworker").expect("d").config();
    c.filter_subject = "ORDERS.approved".into();
    let r: Result<async_nats::jetstream::consumer::PullConsumer, _> = orders.create_consumer(c).await;
    eprintln!("PROBE filter change: {:?}", r.err().map(|e| e.to_string()));
    let err = bootstrapper::ensure_stream(&js, 3).await.expect_err("r3");
    eprintln!("PROBE r3: {err:#}");
    let err = bootstrapper::ensure_consumers(&js).await;
    eprintln!("PROBE consumers after: {err:?}");
}
