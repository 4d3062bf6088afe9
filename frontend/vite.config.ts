import { defineConfig } from 'vite';

// Served by beeld: index.html at `/`, the bundle under `/app/`.
export default defineConfig({
  base: '/app/',
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 1500 },
  server: {
    proxy: {
      '/collections': 'http://127.0.0.1:8080',
      '/basemap': 'http://127.0.0.1:8080',
      '/hazards': 'http://127.0.0.1:8080',
      '/incidents': 'http://127.0.0.1:8080',
      '/ws': { target: 'ws://127.0.0.1:8080', ws: true },
    },
  },
  test: { include: ['tests/unit/**/*.test.ts'] },
});
