//! The row type and the column list against the table the migrations make.

use order_readmodel::{MIGRATOR, ORDER_COLUMNS, OrderRow};
use rust_decimal::Decimal;
use testkit::Postgres;
use time::OffsetDateTime;
use uuid::Uuid;

#[tokio::test]
async fn the_row_reads_every_column_the_migrations_make() {
    let postgres = Postgres::start().expect("PostgreSQL starts");
    let url = postgres.create_database("ordersdb").await.expect("created");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    MIGRATOR.run(&pool).await.expect("migrations run");

    let made: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::TEXT FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'orders' ORDER BY column_name",
    )
    .fetch_all(&pool)
    .await
    .expect("columns listed");
    let mut listed: Vec<String> = ORDER_COLUMNS
        .split(',')
        .map(|column| column.trim().to_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed, made,
        "ORDER_COLUMNS names every column of orders once"
    );

    let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a time");
    let row = OrderRow {
        order_id: Uuid::new_v4(),
        customer_id: "c1".into(),
        restaurant_id: "r1".into(),
        status: "Rejected".into(),
        amount: Decimal::new(2530, 2),
        refunded: true,
        version: 4,
        reason: Some("over the limit".into()),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        payment_id: Some(Uuid::new_v4()),
        created_on: now,
        updated_at: now + time::Duration::seconds(3),
    };
    sqlx::query(&format!(
        "INSERT INTO orders ({ORDER_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(row.order_id)
    .bind(&row.customer_id)
    .bind(&row.restaurant_id)
    .bind(&row.status)
    .bind(row.amount)
    .bind(row.refunded)
    .bind(row.version)
    .bind(&row.reason)
    .bind(&row.trace_id)
    .bind(row.payment_id)
    .bind(row.created_on)
    .bind(row.updated_at)
    .execute(&pool)
    .await
    .expect("inserted");
    let read: OrderRow = sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders"))
        .fetch_one(&pool)
        .await
        .expect("read back");
    assert_eq!(read, row);
    pool.close().await;
}
