"""An in-memory Kubernetes API server for tests: kmock's KubernetesEmulator, hardened.

There is no cluster on the test machine, so kopf operators run for real, over HTTP, against
kmock's emulator. kmock 0.8 stores and streams JSON but is not an API server; operators rely on
more than that, and a harness that forgives what a cluster refuses hides bugs. This subclass adds:

* server-side metadata: uid, resourceVersion (one global counter), generation (bumped only when
  something outside metadata/status changes), creationTimestamp, and generateName (kopf.adopt
  needs the owner's uid; kopf posts its events with generateName);
* Kubernetes Status errors: 404 NotFound, 409 AlreadyExists, 409 Conflict on a stale
  resourceVersion, 422 Invalid; a write that changes nothing changes nothing (no event);
* merge patches (RFC 7386), JSON patches (kopf's `test` op on resourceVersion answers 422), PUT;
* the status subresource: the main resource ignores `status`, `/status` changes only `status`;
* CRD admission (`register_crd`): pruning of undeclared fields, then tests/crd_schema.py's
  defaults, OpenAPI and CEL validation, answered as `Kind.group "name" is invalid: ...`;
* finalizers/deletionTimestamp and synchronous garbage collection through ownerReferences;
* namespaces as objects (kmock answers 500 on GET /api/v1/namespaces, which kopf lists);
* watches that resume from a resourceVersion, honour timeoutSeconds, label and field selectors,
  and have no gap between their initial listing and their live events;
* request matching that looks at the current request only: kmock checks every request against
  the whole request history, so it slows down quadratically.

Every object's versions stay in `emulator.objects[resource, namespace, name].history` (kmock's
ObjectHistory, None marks a deletion), so tests can assert properties over time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import dataclasses
import datetime
import json
import random
import re
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import dsl, enums, parsing, rendering  # kmock 0.8 internals, read in its source

from crd_schema import admit, openapi_schema

Ref = Any  # 'v1/configmaps', 'tuneloop.dev/v1alpha1/finetunejobs', ('batch/v1', 'Job'), kmock.resource
NAMESPACES = kmock.resource(group='', version='v1', plural='namespaces')
CRDS = kmock.resource(group='apiextensions.k8s.io', version='v1', plural='customresourcedefinitions')
_NAMESPACE_PATH = re.compile(r'/api/v1/namespaces(?:/([^/]+)(?:/(status|finalize))?)?')
_NAME_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789'  # what the API server draws generateName suffixes from
_SERVER_FIELDS = ('uid', 'name', 'namespace', 'generation', 'creationTimestamp', 'resourceVersion',
                  'deletionTimestamp', 'deletionGracePeriodSeconds')  # clients cannot write these


def _error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, None deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _prune(schema: dict[str, Any], value: Any) -> Any:
    """Drop the fields a structural schema does not declare, as the API server does."""
    if isinstance(value, list) and 'items' in schema:
        return [_prune(schema['items'], item) for item in value]
    if not isinstance(value, dict):
        return value
    properties, extra = schema.get('properties', {}), schema.get('additionalProperties')
    keep_unknown = schema.get('x-kubernetes-preserve-unknown-fields') or extra is True
    return {key: _prune(properties[key], item) if key in properties else
                 _prune(extra, item) if isinstance(extra, dict) else item
            for key, item in value.items()
            if key in properties or isinstance(extra, dict) or keep_unknown}


def _selector_matches(selector: str | None, values: dict[str, str]) -> bool:
    """Equality-based label/field selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a` (no set-based ones)."""
    for term in filter(None, (term.strip() for term in (selector or '').split(','))):
        if '!=' in term:
            key, value = term.split('!=', 1)
            ok = values.get(key.strip()) != value.strip()
        elif '=' in term:
            key, value = term.replace('==', '=').split('=', 1)
            ok = values.get(key.strip()) == value.strip()
        elif term.startswith('!'):
            ok = term[1:] not in values
        else:
            ok = term in values
        if not ok:
            return False
    return True


def _set_or_drop(mapping: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key not in ('metadata', 'status')}


def api_version_of(resource: kmock.resource) -> str:
    return resource.version if not resource.group else f'{resource.group}/{resource.version}'


@attrs.define(kw_only=True)
class HardenedEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API-server semantics listed in the module docstring."""

    token: str | None = None  # when set, requests must carry `Authorization: Bearer <token>`

    _rv: int = attrs.field(default=0, init=False)
    _uids: dict[str, tuple[Any, ...]] = attrs.field(factory=dict, init=False)
    _crds: dict[kmock.resource, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _log: dict[kmock.resource, list[tuple[int, dict]]] = attrs.field(factory=lambda: defaultdict(list), init=False)
    _wakeup: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # registers the fallbacks that call our _serve_* below
        with warnings.catch_warnings():  # kmock uses the deprecated importlib.resources.read_binary
            warnings.simplefilter('ignore', DeprecationWarning)
            self.resources.load_bundled()  # the built-in resources of a recent K3s: v1, apps/v1, batch/v1...

    # --- the public, in-process API (the HTTP handlers below call the same methods) ---

    def resolve(self, ref: Ref) -> kmock.resource:
        """A registered resource from 'v1/configmaps', 'batch/v1/jobs', ('batch/v1', 'Job') or a resource."""
        if isinstance(ref, tuple) and len(ref) == 2 and ref[1][:1].isupper():
            group, _, version = ref[0].rpartition('/')
            found = [res for res in self.resources if (res.group, res.version) == (group, version)
                     and self.resources[res].kind == ref[1]]
            if not found:
                raise KeyError(f"No resource is registered for {ref!r}")
            return found[0]
        resource = ref if isinstance(ref, kmock.resource) else kmock.resource(*([ref] if isinstance(ref, str) else ref))
        if resource not in self.resources:
            raise KeyError(f"No resource is registered for {ref!r}")
        return resource

    def register_crd(self, crd: dict[str, Any]) -> dict[str, Any]:
        """Store a CustomResourceDefinition; its resources are then served and admitted against it."""
        return self.create_object(CRDS, None, crd)

    def add_namespace(self, name: str) -> dict[str, Any]:
        self.create_object(NAMESPACES, None, {'metadata': {'name': name}})
        return self.update_object(NAMESPACES, None, name, {'status': {'phase': 'Active'}}, subresource='status')

    def get_object(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        return self._existing(resource, namespace, name)[2]

    def list_objects(self, resource: kmock.resource, namespace: str | None = None,
                     label_selector: str | None = None, field_selector: str | None = None) -> list[dict[str, Any]]:
        self._info(resource)
        return [obj.last.raw for (res, _, _), obj in self.objects.items()
                if res == resource and not obj.deleted
                and self._selected(obj.last.raw, namespace, label_selector, field_selector)]

    def create_object(self, resource: kmock.resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        info = self._info(resource)
        obj = copy.deepcopy(body or {})
        meta = obj.setdefault('metadata', {})
        if info.namespaced:
            namespace = namespace or meta.get('namespace')
            if not namespace or meta.get('namespace', namespace) != namespace:
                raise _error(400, 'BadRequest', 'the namespace of the provided object does not match '
                                                'the namespace sent on the request')
            if self._live((NAMESPACES, None, namespace)) is None:
                raise _error(404, 'NotFound', f'namespaces "{namespace}" not found', name=namespace, kind='namespaces')
            meta['namespace'] = namespace
        else:
            namespace = None
            meta.pop('namespace', None)
        if not meta.get('name'):
            if not meta.get('generateName'):
                raise self._invalid(resource, '', ['metadata.name: Required value: name or generateName is required'])
            while not meta.get('name') or self._live((resource, namespace, meta['name'])) is not None:
                meta['name'] = meta['generateName'] + ''.join(random.choices(_NAME_ALPHABET, k=5))
        key = (resource, namespace, meta['name'])
        if self._live(key) is not None:
            raise _error(409, 'AlreadyExists', f'{self._title(resource)} "{meta["name"]}" already exists',
                         name=meta['name'], group=resource.group, kind=resource.plural)
        obj['apiVersion'], obj['kind'] = api_version_of(resource), info.kind
        if 'status' in info.subresources:
            obj.pop('status', None)  # set only through /status
        for field in set(_SERVER_FIELDS) - {'name', 'namespace'}:
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=_now())
        obj = self._admit(resource, obj)
        if resource == CRDS:
            self._serve_crd(obj)
        self._store(key, obj, 'ADDED')
        return obj

    def update_object(self, resource: kmock.resource, namespace: str | None, name: str, body: Any, *,
                      subresource: str | None = None, patch_type: str | None = 'merge') -> dict[str, Any]:
        """Write an object: patch_type 'merge' (RFC 7386), 'json' (RFC 6902) or None (PUT: replace)."""
        info, key, current = self._existing(resource, namespace, name)
        if subresource is not None and (subresource != 'status' or subresource not in info.subresources):
            raise _error(404, 'NotFound', 'the server could not find the requested resource')
        if patch_type == 'json':
            try:
                new = jsonpatch.apply_patch(current, body)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as failure:
                raise self._invalid(resource, name, [f'<patch>: {failure}'])
            wanted_rv = None
        elif isinstance(body, dict):
            new = copy.deepcopy(body) if patch_type is None else _merge_patch(current, body)
            wanted_rv = (body.get('metadata') or {}).get('resourceVersion')
        else:
            raise _error(400, 'BadRequest', f'the body of the request was in an unknown format: {body!r}')
        if wanted_rv is not None and str(wanted_rv) != current['metadata']['resourceVersion']:
            raise _error(409, 'Conflict', f'Operation cannot be fulfilled on {self._title(resource)} "{name}": '
                         'the object has been modified; please apply your changes to the latest version and try again',
                         name=name, group=resource.group, kind=resource.plural)
        if subresource == 'status':  # /status changes the status and nothing else
            status, new = new.get('status'), copy.deepcopy(current)
            _set_or_drop(new, 'status', status)
        elif 'status' in info.subresources:  # the main resource ignores the status
            _set_or_drop(new, 'status', current.get('status'))
        meta = new['metadata'] = dict(new.get('metadata') or {})
        for field in _SERVER_FIELDS:
            _set_or_drop(meta, field, current['metadata'].get(field))
        new['apiVersion'], new['kind'] = current['apiVersion'], current['kind']
        new = self._admit(resource, new)
        meta = new['metadata']
        if new == current:
            return current  # a no-op write: no new resourceVersion, no watch event
        if _spec_part(new) != _spec_part(current):
            meta['generation'] = current['metadata'].get('generation', 0) + 1
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            return self._erase(key, new)  # the last finalizer is gone: the deletion completes
        return self._store(key, new, 'MODIFIED')

    def delete_object(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        _, key, current = self._existing(resource, namespace, name)
        if not current['metadata'].get('finalizers'):
            return self._erase(key, current)
        if current['metadata'].get('deletionTimestamp'):
            return current
        new = copy.deepcopy(current)
        new['metadata'].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
        return self._store(key, new, 'MODIFIED')

    def stop_watches(self) -> None:
        """End every watch stream now (else the HTTP server waits for them when it stops)."""
        self._closing = True
        self._wakeup.set()

    # --- storage, events, admission ---

    def _info(self, resource: kmock.resource | None) -> kmock.ResourceInfo:
        if resource is None or resource.plural is None or resource not in self.resources:
            raise _error(404, 'NotFound', 'the server could not find the requested resource')
        return self.resources[resource]

    def _live(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        obj = self.objects._objects.get(key)  # a plain dict lookup (the public view re-parses keys)
        return None if obj is None or obj.deleted else obj.last.raw

    def _existing(self, resource: kmock.resource, namespace: str | None,
                  name: str) -> tuple[kmock.ResourceInfo, tuple[Any, ...], dict[str, Any]]:
        info = self._info(resource)
        key = (resource, namespace if info.namespaced else None, name)
        current = self._live(key)
        if current is None:
            raise _error(404, 'NotFound', f'{self._title(resource)} "{name}" not found',
                         name=name, group=resource.group, kind=resource.plural)
        return info, key, copy.deepcopy(current)

    def _store(self, key: tuple[Any, ...], obj: dict[str, Any], event: str) -> dict[str, Any]:
        self._rv += 1
        obj['metadata']['resourceVersion'] = str(self._rv)
        if key in self.objects:
            self.objects[key].history.append(obj)  # a re-created object continues its history
        else:
            self.objects[key] = obj
        self._uids[obj['metadata']['uid']] = key
        self._publish(key[0], event, obj)
        return obj

    def _erase(self, key: tuple[Any, ...], last: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        final = copy.deepcopy(last)
        final['metadata']['resourceVersion'] = str(self._rv)
        self.objects[key].delete()  # history: None marks the deletion
        uid = final['metadata']['uid']
        self._uids.pop(uid, None)
        self._publish(key[0], 'DELETED', final)
        for (resource, namespace, name), obj in list(self.objects.items()):  # the garbage collector
            if obj.deleted:
                continue
            owners = {ref.get('uid') for ref in obj.last.raw['metadata'].get('ownerReferences', [])}
            orphaned = uid in owners and not owners & self._uids.keys()
            if orphaned or (key[0] == NAMESPACES and namespace == key[2]):
                if self._live((resource, namespace, name)) is not None:  # not yet collected by recursion
                    self.delete_object(resource, namespace, name)
        return final

    def _publish(self, resource: kmock.resource, kind: str, obj: dict[str, Any]) -> None:
        self._log[resource].append((self._rv, {'type': kind, 'object': obj}))
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _serve_crd(self, crd: dict[str, Any]) -> None:
        spec, names = crd['spec'], crd['spec']['names']
        for version in spec['versions']:
            if version.get('served', True):
                resource = kmock.resource(group=spec['group'], version=version['name'], plural=names['plural'])
                self.resources[resource] = kmock.ResourceInfo(
                    kind=names['kind'], singular=names.get('singular'), namespaced=spec['scope'] == 'Namespaced',
                    verbs={'list', 'watch', 'get', 'create', 'update', 'patch', 'delete'},
                    shortnames=names.get('shortNames', []), categories=names.get('categories', []),
                    subresources=set(version.get('subresources') or {}))
                self._crds[resource] = crd

    def _admit(self, resource: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        crd = self._crds.get(resource)
        if crd is None:
            return obj
        pruned = _prune(openapi_schema(crd), obj)
        pruned.update({key: obj[key] for key in ('apiVersion', 'kind', 'metadata') if key in obj})
        stored, errors = admit(crd, pruned)
        if errors:
            raise self._invalid(resource, obj['metadata'].get('name', ''), errors)
        return stored

    def _invalid(self, resource: kmock.resource, name: str, errors: list[str]) -> kmock.KubernetesError:
        kind = self.resources[resource].kind
        title = f'{kind}.{resource.group}' if resource.group else kind
        listed = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
        return _error(422, 'Invalid', f'{title} "{name}" is invalid: {listed}',
                      name=name, group=resource.group, kind=kind,
                      causes=[{'reason': 'FieldValueInvalid', 'field': error.split(':')[0], 'message': error}
                              for error in errors])

    def _title(self, resource: kmock.resource) -> str:
        return f'{resource.plural}.{resource.group}' if resource.group else str(resource.plural)

    @staticmethod
    def _selected(obj: dict[str, Any], namespace: str | None, labels: str | None, fields: str | None) -> bool:
        meta = obj.get('metadata', {})
        return ((namespace is None or meta.get('namespace') == namespace)
                and _selector_matches(labels, meta.get('labels') or {})
                and _selector_matches(fields, {'metadata.name': meta.get('name'),
                                               'metadata.namespace': meta.get('namespace')}))

    # --- HTTP: parsing, dispatching, and the handlers kmock's fallbacks call ---

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            request = await self._parse(raw_request)
            self._requests.append(request)
            try:
                return await self._handle(request)
            except rendering.StreamingError as failure:  # the response may have started already
                raw_response = failure.args[0]
                raise failure.__cause__ or failure from None
        except Exception as failure:
            if not isinstance(failure, kmock.KubernetesError) and self._errors:
                self._errors[-1].append(failure)  # unexpected: kept for assertions (`emulator.errors`)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(failure)
            await self._stream_error(failure, raw_response)
            await raw_response.write_eof()
            return raw_response

    async def _parse(self, raw_request: aiohttp.web.BaseRequest) -> rendering.Request:
        """kmock's parsing, but /api/v1/namespaces[/NAME] is the namespaces resource and PUT is an update."""
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        method, params = enums.method(raw_request.method), dict(raw_request.query)
        match = _NAMESPACE_PATH.fullmatch(raw_request.path)
        if match:
            k8s = parsing.ParsedPath('', 'v1', 'namespaces', None, match[1], match[2])
        else:
            k8s = parsing.parse_path(raw_request.path)
        action = parsing.guess_k8s(k8s, method, params)
        if method == enums.method.PUT and k8s.name is not None:
            action = enums.action.UPDATE
        resource = None if k8s.group is None else kmock.resource(group=k8s.group, version=k8s.version, plural=k8s.plural)
        return rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=method, params=params,
            headers=dict(raw_request.headers), cookies=dict(raw_request.cookies), body=body,
            text=body.decode('utf-8', 'replace'), data=data, action=action, resource=resource,
            namespace=k8s.namespace, name=k8s.name, subresource=k8s.subresource)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """RawHandler._handle, but a reaction is matched against this request, not the whole history."""
        if self.token is not None and request.headers.get('Authorization') != f'Bearer {self.token}':
            raise _error(401, 'Unauthorized', 'Unauthorized')
        priorities = [tuple(-p for p in payload.priorities) for payload in self._payloads]
        width = max(map(len, priorities), default=0)
        order = sorted(range(len(priorities)), key=lambda i: priorities[i] + (0,) * (width - len(priorities[i])))
        for payload in (self._payloads[index] for index in order):
            if not payload._disabled.is_set() and self._sees(payload._source, request):
                try:
                    return await payload(request)
                except rendering.ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        raise NotImplementedError('No reaction matches the request.')

    def _sees(self, view: dsl.View, request: rendering.Request) -> bool:
        match view:
            case dsl.Root():
                return view is self
            case dsl.Filter():
                return view.criteria(request) and self._sees(view._source, request)
            case dsl.Priority():
                return self._sees(view._source, request)
            case dsl.OrGroup():
                return any(self._sees(source, request) for source in view._sources)
            case dsl.AndGroup():
                return all(self._sees(source, request) for source in view._sources)
            case dsl.Exclusion():
                return self._sees(view._source, request) and not any(self._sees(e, request) for e in view._exclusions)
            case _:
                return request in view  # slices and the like depend on history: kmock's own check

    async def _serve_version(self, request: rendering.Request) -> dict[str, Any]:
        discovery = await super()._serve_version(request)
        discovery['groupVersion'] = api_version_of(request.resource)  # kmock says '/v1' for the core group
        return discovery

    async def _serve_list(self, request: rendering.Request) -> dict[str, Any]:
        info = self._info(request.resource)
        items = self.list_objects(request.resource, request.namespace,
                                  request.params.get('labelSelector'), request.params.get('fieldSelector'))
        return {'apiVersion': api_version_of(request.resource), 'kind': f'{info.kind}List',
                'metadata': {'resourceVersion': str(self._rv)}, 'items': items}

    async def _serve_fetch(self, request: rendering.Request) -> dict[str, Any]:
        if request.subresource not in (None, 'status'):
            raise _error(404, 'NotFound', 'the server could not find the requested resource')
        return self.get_object(request.resource, request.namespace, request.name)

    async def _serve_create(self, request: rendering.Request) -> dict[str, Any]:
        if not isinstance(request.data, dict):
            raise _error(400, 'BadRequest', 'the body of the request was in an unknown format')
        return self.create_object(request.resource, request.namespace, request.data)

    async def _serve_update(self, request: rendering.Request) -> dict[str, Any]:
        content_type = request.headers.get('Content-Type', '')
        if 'apply-patch' in content_type:
            raise _error(415, 'UnsupportedMediaType', 'server-side apply is not emulated')
        patch_type = None if request.method == enums.method.PUT else 'json' if 'json-patch' in content_type else 'merge'
        return self.update_object(request.resource, request.namespace, request.name, request.data,
                                  subresource=request.subresource, patch_type=patch_type)

    async def _serve_delete(self, request: rendering.Request) -> dict[str, Any]:
        return self.delete_object(request.resource, request.namespace, request.name)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        info, params, resource = self._info(request.resource), request.params, request.resource
        log = self._log[resource]
        labels, fields = params.get('labelSelector'), params.get('fieldSelector')
        since, initial = params.get('resourceVersion'), params.get('sendInitialEvents') == 'true'
        # The snapshot and the position in the event log are taken together: no event falls in between.
        if since in (None, '', '0') or initial:
            position = len(log)
            objects = self.list_objects(resource, request.namespace, labels, fields)
            events = [{'type': 'ADDED', 'object': obj} for obj in objects]
            if initial:
                events.append({'type': 'BOOKMARK', 'object': {
                    'apiVersion': api_version_of(resource), 'kind': info.kind, 'metadata': {
                        'resourceVersion': str(self._rv), 'annotations': {'k8s.io/initial-events-end': 'true'}}}})
        else:
            position, events = bisect.bisect_right(log, int(since), key=lambda entry: entry[0]), []
        deadline = time.monotonic() + float(params.get('timeoutSeconds') or 3600)
        yield b''  # send the headers now
        for event in events:
            yield event
        transport = request._raw_request.transport if request._raw_request is not None else None
        while not self._closing and (transport is None or not transport.is_closing()):
            while position < len(log):
                event = log[position][1]
                position += 1
                if self._selected(event['object'], request.namespace, labels, fields):
                    yield event
            wakeup, remaining = self._wakeup, deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wakeup.wait(), min(remaining, 1.0))


@dataclasses.dataclass
class Harness:
    """A running emulator with its URL, and helpers for tests that play the cluster's controllers."""
    emulator: HardenedEmulator
    url: str
    token: str | None

    def connection_info(self) -> Any:
        """For `@kopf.on.login()`: `return harness.connection_info()`."""
        import kopf
        return kopf.ConnectionInfo(server=self.url, scheme='Bearer', token=self.token, insecure=True,
                                   default_namespace='default')

    def write_kubeconfig(self, path: str | Path) -> Path:
        """A kubeconfig (token auth, plain http to 127.0.0.1) for kopf.login_with_kubeconfig or kubectl."""
        path = Path(path)
        path.write_text(yaml.safe_dump({
            'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'emulator',
            'clusters': [{'name': 'emulator', 'cluster': {'server': self.url, 'insecure-skip-tls-verify': True}}],
            'users': [{'name': 'emulator', 'user': {'token': self.token}}],
            'contexts': [{'name': 'emulator',
                          'context': {'cluster': 'emulator', 'user': 'emulator', 'namespace': 'default'}}],
        }))
        return path

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create from a manifest (namespace "default" if it names none), with the same admission as over HTTP."""
        resource = self.emulator.resolve((obj['apiVersion'], obj['kind']))
        namespaced = self.emulator.resources[resource].namespaced
        namespace = obj.get('metadata', {}).get('namespace') or ('default' if namespaced else None)
        return copy.deepcopy(self.emulator.create_object(resource, namespace, obj))

    def add_namespace(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.emulator.add_namespace(name))

    def get(self, ref: Ref, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The current object, or None when there is none."""
        with contextlib.suppress(kmock.KubernetesError):
            return copy.deepcopy(self.emulator.get_object(self.emulator.resolve(ref), namespace, name))
        return None

    def patch(self, ref: Ref, namespace: str | None, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the main resource (a `status` in it is ignored where status is a subresource)."""
        return copy.deepcopy(self.emulator.update_object(self.emulator.resolve(ref), namespace, name, patch))

    def patch_status(self, ref: Ref, namespace: str | None, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status as a controller does: a Job's {'succeeded': 1}, a Deployment's {'readyReplicas': 1}."""
        resource = self.emulator.resolve(ref)
        subresource = 'status' if 'status' in self.emulator.resources[resource].subresources else None
        patched = self.emulator.update_object(resource, namespace, name, {'status': status}, subresource=subresource)
        return copy.deepcopy(patched)

    def delete(self, ref: Ref, namespace: str | None, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.emulator.delete_object(self.emulator.resolve(ref), namespace, name))

    def list_objects(self, ref: Ref, namespace: str | None = None, *, label_selector: str | None = None,
                     include_deleted: bool = False) -> list[dict[str, Any]]:
        """Current objects; with include_deleted, the last state of every object there ever was."""
        resource = self.emulator.resolve(ref)
        if not include_deleted:
            return copy.deepcopy(self.emulator.list_objects(resource, namespace, label_selector))
        lasts = [obj.last.raw for (res, ns, _), obj in self.emulator.objects.items()
                 if res == resource and namespace in (None, ns)]
        return [copy.deepcopy(last) for last in lasts
                if _selector_matches(label_selector, last.get('metadata', {}).get('labels') or {})]

    def history(self, ref: Ref, namespace: str | None, name: str) -> list[dict[str, Any] | None]:
        """Every version the object had, oldest first; None where it was deleted."""
        key = (self.emulator.resolve(ref), namespace, name)
        if key not in self.emulator.objects:
            return []
        return [None if version is None else copy.deepcopy(version.raw) for version in self.emulator.objects[key].history]

    def assert_event_precedes(self, ref: Ref, namespace: str, name: str, reason: str, phase: str) -> None:
        """The `reason` Event about the object was stored before the first version of it in `phase`:
        whoever reads the new phase finds the Event that announces it already there."""
        versions = [v for v in self.history(ref, namespace, name) if v and (v.get('status') or {}).get('phase') == phase]
        assert versions, f'{name} was never {phase}'
        events = [int(e['metadata']['resourceVersion']) for e in self.list_objects(('v1', 'Event'), namespace)
                  if e.get('reason') == reason and e['involvedObject'].get('name') == name]
        assert events, f'no {reason} Event about {name}'
        assert min(events) < int(versions[0]['metadata']['resourceVersion']), \
            f'the {reason} Event was stored after {name} was already {phase}'

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
        """Poll until predicate() is truthy; return its value or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            if time.monotonic() > deadline:
                raise TimeoutError(f'Not true within {timeout}s: {predicate}')
            await asyncio.sleep(interval)
        return result

    @contextlib.asynccontextmanager
    async def kopf_operator(self, registry: Any, *, settings: Any = None, namespaces: Iterable[str] = ('default',),
                            clusterwide: bool = False, timeout: float = 10.0) -> AsyncIterator[asyncio.Task[None]]:
        """Run kopf.operator() with this registry against the emulator in a task; stop it cleanly on exit."""
        import kopf
        kopf.on.login(registry=registry)(lambda **_: self.connection_info())
        stop_flag, ready_flag = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(kopf.operator(
            registry=registry, settings=settings or kopf_test_settings(), standalone=True, clusterwide=clusterwide,
            namespaces=() if clusterwide else list(namespaces), stop_flag=stop_flag, ready_flag=ready_flag))
        try:
            ready = asyncio.create_task(ready_flag.wait())
            await asyncio.wait([ready, task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if task.done():
                task.result()  # the operator failed to start: raise its error
                raise RuntimeError('The operator exited at its start.')
            if not ready_flag.is_set():
                raise TimeoutError(f'The operator was not ready within {timeout}s.')
            yield task
        finally:
            stop_flag.set()
            await asyncio.wait_for(task, timeout)


# kopf's own peering resource (for operators run with peering), as kopf's peering.yaml defines it:
# status without a subresource.
PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {"group": "kopf.dev", "scope": "Namespaced",
             "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"status": {"type": "object",
                                                             "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}


def handlers_registry(module: str) -> Any:
    """A fresh kopf registry holding the handlers a module registers at import (it is (re)imported into it)."""
    import importlib
    import sys

    import kopf
    fresh, previous = kopf.OperatorRegistry(), kopf.get_default_registry()
    kopf.set_default_registry(fresh)
    try:
        if module in sys.modules:
            importlib.reload(sys.modules[module])
        else:
            importlib.import_module(module)
    finally:
        kopf.set_default_registry(previous)
    return fresh


def kopf_test_settings() -> Any:
    """kopf settings that suit tests: short timeouts and backoffs, server-side watch timeouts."""
    import kopf
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 10
    settings.watching.client_timeout = 15
    settings.watching.connect_timeout = 2
    settings.networking.request_timeout = 5
    settings.networking.error_backoffs = [0.1, 0.2, 0.5]
    settings.queueing.exit_timeout = 1
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field='status.kopf.progress')
    return settings


@contextlib.asynccontextmanager
async def running_emulator(crds: Iterable[dict[str, Any]] = (), namespaces: Iterable[str] = ('default',),
                           token: str | None = 'test') -> AsyncIterator[Harness]:
    """Serve a HardenedEmulator over HTTP on 127.0.0.1 with these CRDs and namespaces."""
    emulator = HardenedEmulator(token=token)
    for crd in crds:
        emulator.register_crd(crd)
    for namespace in namespaces:
        emulator.add_namespace(namespace)
    async with emulator, kmock.Server(emulator, host='127.0.0.1') as server:
        try:
            yield Harness(emulator, str(server.url).rstrip('/'), token)
        finally:
            emulator.stop_watches()
