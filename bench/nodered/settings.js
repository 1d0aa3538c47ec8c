// Node-RED settings for bench/nodered/run.py: headless, loopback only, nothing phoning home.
//
// run.py starts Node-RED as `node red.js --settings settings.js --userDir DIR FLOW.json`
// with BENCH_NODES_DIR pointing at the generated bench-source / bench-sink nodes (only
// for the throughput and delay workloads; the start / idle flows use core nodes only).
module.exports = {
    // No HTTP server at all: with both roots off Node-RED runs headless and never
    // listens. Headless Node-RED exits when nothing is pending, so every bench flow
    // keeps an hourly inject.
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    uiHost: "127.0.0.1",
    credentialSecret: false,
    flowFilePretty: false,
    nodesDir: process.env.BENCH_NODES_DIR ? [process.env.BENCH_NODES_DIR] : [],
    logging: {
        console: {
            level: process.env.BENCH_LOG_LEVEL || "info",
            metrics: false,
            audit: false,
        },
    },
    telemetry: { enabled: false, updateNotification: false },
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    externalModules: {
        autoInstall: false,
        palette: { allowInstall: false, allowUpload: false },
        modules: { allowInstall: false },
    },
    functionExternalModules: false,
    editorTheme: { projects: { enabled: false } },
};
