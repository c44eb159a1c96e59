//! `pvefleet bench dlq`: a batch replay of stored dead letters, as `pvefleet dlq replay` does
//! it, with no rate limit. The dead letters are made in a database of the bench's own and
//! replayed into a queue of its own on the configured broker; it reports messages per second.

use std::process::ExitCode;
use std::time::Instant;

use pvefleet_core::bus::Publisher;
use pvefleet_core::bus::envelope::Properties;
use pvefleet_core::bus::probe::Probe;
use uuid::Uuid;

pub async fn run(settings: &pvefleet_core::Settings, count: usize) -> anyhow::Result<ExitCode> {
    let mut s = settings.clone();
    let bench_db = format!("pvefleet_bench_{}", Uuid::new_v4().simple());
    let base = s.db.url.expose().to_string();
    let (prefix, _) = base
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("db.url has no database"))?;
    s.db.url = pvefleet_core::Secret::new(format!("{prefix}/{bench_db}"));
    let pool = pvefleet_core::db::connect(&s.db).await?;
    pvefleet_core::db::migrate(&pool).await?;
    let ch = Probe::connect_with(&s.bus).await?;
    let queue = format!("pvefleet.bench.dlq-{}", Uuid::new_v4().simple());
    ch.declare_queue(&queue).await?;
    eprintln!("storing {count} dead letters…");
    let client = pool.get().await?;
    let properties = Properties {
        content_type: Some("application/json".into()),
        kind: Some("container.start".into()),
        delivery_mode: Some(2),
        message_id: Some("bench".into()),
        ..Properties::default()
    }
    .with_header("x-tenant", "bench")
    .with_header("pvefleet-fault-class", "retries-exhausted")
    .to_stored();
    client
        .execute(
            "INSERT INTO dead_letters (id, message_id, attempts, message_type, properties, body, origin_exchange,
                 origin_routing_key, origin_queue, fault_class, fault_message, fingerprint)
             SELECT gen_random_uuid(), 'bench-' || n, 3, 'container.start',
                    jsonb_set($1::jsonb, '{message_id}', to_jsonb('bench-' || n)),
                    convert_to('{\"site_id\":\"01930c5e-7a10-7000-8000-000000000001\",\"vmid\":' || n || '}', 'UTF8'),
                    '', $2, 'pvefleet.provisioner', 'retries-exhausted', 'bench', 'bench/group'
             FROM generate_series(1, $3::bigint) AS n",
            &[&properties, &queue, &(count as i64)],
        )
        .await?;
    let topology = pvefleet_core::bus::topology::Topology::fleet(&s.bus);
    let publisher = Publisher::new(&s.bus, "bench-dlq", Some(topology));
    publisher.connect().await?;
    eprintln!("replaying…");
    let started = Instant::now();
    let done = pvefleet_core::dlq::replay(
        &client,
        &publisher,
        &pvefleet_core::dlq::Filter {
            group: Some("bench/group".into()),
            ..Default::default()
        },
        &"bench".into(),
        false,
        None,
        |_, _| {},
    )
    .await?;
    let elapsed = started.elapsed();
    let landed = ch.queue_len(&queue).await?.unwrap_or(0);
    let rate = done.replayed.len() as f64 / elapsed.as_secs_f64();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| dead letters replayed | {} |", done.replayed.len());
    println!("| messages in the destination queue | {landed} |");
    println!("| elapsed | {:.2} s |", elapsed.as_secs_f64());
    println!("| replay rate | {rate:.0} msgs/s |");
    let _ = ch.delete_queue(&queue).await;
    ch.close();
    drop(client);
    drop(pool);
    let admin_url = format!("{prefix}/postgres");
    if let Ok((admin, conn)) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = admin
            .execute(&format!("DROP DATABASE IF EXISTS {bench_db} WITH (FORCE)"), &[])
            .await;
    }
    Ok(if landed as usize == count {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: {landed} of {count} replayed messages reached the queue");
        ExitCode::from(1)
    })
}
