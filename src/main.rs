//! The `verve` binary: parses the flags, installs logging and the signal handlers, starts the
//! service and waits for it to stop.

use verve::config::Config;

fn main() {
    let config = Config::from_args();
    if let Err(e) = run(&config) {
        eprintln!("verve: {e:#}");
        std::process::exit(1);
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    verve::logs::init(&config.stats_log, &config.callback_log)?;
    let settings = config.settings();
    let (trigger, listeners) = verve::shutdown::channel(settings.workers.count.get())?;
    trigger.on_signals()?;
    let service = verve::start(&settings, listeners)?;
    log::info!(
        "listening on {} with {} workers ({}), stats to {}, callback outcomes to {}",
        service.local_addr(),
        service.workers(),
        service.driver(),
        config.stats_log.display(),
        config.callback_log.display()
    );
    verve::systemd::notify_ready();
    service.wait();
    log::info!("stopped");
    Ok(())
}
