//! Counting the calls a sidecar makes to Redis, for the tests of one call per write.

use crate::harness::TestApp;

/// Counts the calls clients make to Redis, as `MONITOR` shows them in the order Redis ran
/// them: a script call or a read of one key sent as its command is one; the commands a script
/// runs are not (they show as `lua`), nor pings and the test's own markers.
pub(crate) struct Calls {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    admin: ::redis::aio::MultiplexedConnection,
    markers: u64,
}

impl Calls {
    pub(crate) async fn new(app: &TestApp) -> Self {
        let client = ::redis::Client::open(app.admin_url()).unwrap();
        let monitor = client.get_async_monitor().await.unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = monitor.into_on_message::<String>();
            while let Some(line) = futures::StreamExt::next(&mut stream).await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            lines,
            admin: client.get_multiplexed_async_connection().await.unwrap(),
            markers: 0,
        }
    }

    async fn mark(&mut self) -> String {
        self.markers += 1;
        let marker = format!("calls-marker-{}", self.markers);
        let _: String = ::redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut self.admin)
            .await
            .unwrap();
        marker
    }

    /// The calls made while `work` ran.
    pub(crate) async fn during<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> (u64, T) {
        let start = self.mark().await;
        let out = work.await;
        let end = self.mark().await;
        let (mut counting, mut calls) = (false, 0);
        loop {
            let line = self.lines.recv().await.expect("MONITOR ended");
            if line.contains(&start) {
                counting = true;
            } else if line.contains(&end) {
                return (calls, out);
            } else if counting && !line.contains(" lua]") {
                let command = line.split("] \"").nth(1).unwrap_or_default();
                let command = command.split('"').next().unwrap_or_default();
                let store = [
                    "EVALSHA",
                    "EVAL",
                    "EVALSHA_RO",
                    "EVAL_RO",
                    "GET",
                    "HGET",
                    "HGETALL",
                ];
                calls += u64::from(store.contains(&command.to_uppercase().as_str()));
            }
        }
    }
}
