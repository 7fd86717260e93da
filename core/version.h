#ifndef JWKE_VERSION_H
#define JWKE_VERSION_H
#define JWKENGINE_VERSION "0.1.0"
#endif
