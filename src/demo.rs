pub async fn run(_s: crate::config::Settings, _k: bool) -> anyhow::Result<()> {
    Ok(())
}
