// Starts converse.js with the settings the Playwright script put in window.__XMPPCM_TEST__
// (an init script, run before this page's scripts). A tiny plugin hands the test the
// `_converse` object so it can read the connection state; everything the user does (log in,
// type, press Enter, log out) goes through converse's own UI.
/* global converse */
(function () {
    const t = window.__XMPPCM_TEST__ || {};
    converse.plugins.add('xmppcm-test', {
        initialize() {
            window.__converse = this._converse;
        },
    });
    const settings = {
        assets_path: '/dist/',
        // The classic web-chat widget. (The fullscreen view's footer loads sponsor logos from
        // conversejs.org, which the page's CSP blocks.)
        view_mode: 'overlayed',
        loglevel: 'debug',
        i18n: 'en',
        locales: ['en'],
        authentication: 'login',
        auto_login: false,
        auto_reconnect: false,
        keepalive: false,
        reuse_scram_keys: false,
        clear_cache_on_logout: true,
        persistent_store: 'localStorage',
        allow_registration: false,
        xmpp_providers_url: '',
        allow_non_roster_messaging: true,
        // OMEMO off: its plugin would fetch its WebAssembly again and again.
        omemo_default: false,
        whitelisted_plugins: ['xmppcm-test'],
        blacklisted_plugins: ['converse-omemo', 'converse-omemo-views', 'converse-push', 'converse-register'],
        play_sounds: false,
        show_desktop_notifications: false,
        use_system_emojis: true,
        embed_3rd_party_media_players: false,
        show_images_inline: false,
        show_client_info: false,
        discover_connection_methods: !!t.discover,
    };
    if (t.bosh) settings.bosh_service_url = t.bosh;
    if (t.ws) settings.websocket_url = t.ws;
    converse.initialize(settings).catch((e) => console.error('converse.initialize failed', e));
})();
